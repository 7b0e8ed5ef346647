//! The hypercall decoder, against a guest memory image made of the input: from the port, the
//! bytes written and whatever memory holds, it decodes a call or refuses it, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_kvm::hypercall::decode;
use tandem_kvm::memory::GuestRead;

/// Guest memory: the input's bytes from guest address 0.
struct Image<'a>(&'a [u8]);

impl GuestRead for Image<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(bytes) = usize::try_from(addr).ok().and_then(|at| self.0.get(at..at.checked_add(buf.len())?)) else {
            return false;
        };
        buf.copy_from_slice(bytes);
        true
    }
}

fuzz_target!(|data: &[u8]| {
    // 2 bytes of port, a VCPU count, the write's length (0-7 bytes), then the write's bytes
    // and guest memory.
    let [p0, p1, vcpus, len, rest @ ..] = data else { return };
    let len = usize::from(len % 8).min(rest.len());
    let (written, memory) = rest.split_at(len);
    let port = u16::from_le_bytes([*p0, *p1]);
    let _ = decode(&Image(memory), u32::from(*vcpus % 65).max(1), port, written);
});
