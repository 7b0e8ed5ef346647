//! A VM's guest memory as the monitor touches it: bounds-checked copies in and out, and the
//! shared page. Nothing but the shared page, made only of atomics, is ever seen through a
//! reference into guest memory.

use std::ops::Deref;

use anyhow::Context;
use pv_abi::layout;
use pv_abi::shared::SharedPage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Reads of guest memory: all that decoding a hypercall may do with it.
pub trait GuestRead {
    /// Bytes of guest memory, from guest address 0.
    fn size(&self) -> u64;

    /// Copies `buf.len()` bytes from guest address `addr`; false unless they lie wholly in
    /// guest memory (then `buf` holds nothing of use).
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// Whether `len` bytes at `addr` lie wholly in guest memory.
    fn contains(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len).is_some_and(|end| end <= self.size())
    }
}

/// Guest memory: `size` bytes from guest address 0.
#[derive(Debug)]
pub struct GuestMemory {
    mmap: GuestMemoryMmap,
    size: u64,
}

impl GuestMemory {
    /// Maps `size` bytes of fresh, zeroed guest memory.
    pub fn new(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])?;
        Ok(GuestMemory { mmap, size })
    }

    /// Where guest address 0 is mapped in the monitor.
    pub fn host_base(&self) -> *mut u8 {
        self.mmap.get_host_address(GuestAddress(0)).expect("guest memory starts at address 0")
    }

    /// Writes `bytes` at guest address `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> anyhow::Result<()> {
        self.mmap.write_slice(bytes, GuestAddress(addr)).with_context(|| format!("writing guest memory at {addr:#x}"))
    }

    /// Writes a hypercall's `ret` at the start of its argument block, which decoding found in
    /// memory.
    pub fn write_ret(&self, block: u64, ret: i64) {
        let _ = self.mmap.write_slice(&ret.to_le_bytes(), GuestAddress(block));
    }

    /// The shared page.
    pub fn shared_page(&self) -> &SharedPage {
        shared_page(&self.mmap)
    }

    /// A handle on the shared page, which keeps guest memory mapped as long as it lives.
    pub fn shared_page_ref(&self) -> SharedPageRef {
        SharedPageRef { mmap: self.mmap.clone() }
    }
}

impl GuestRead for GuestMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.contains(addr, buf.len() as u64) && self.mmap.read_slice(buf, GuestAddress(addr)).is_ok()
    }
}

/// A VM's shared page; the guest memory stays mapped while a handle lives.
#[derive(Debug, Clone)]
pub struct SharedPageRef {
    mmap: GuestMemoryMmap,
}

impl Deref for SharedPageRef {
    type Target = SharedPage;

    fn deref(&self) -> &SharedPage {
        shared_page(&self.mmap)
    }
}

fn shared_page(mmap: &GuestMemoryMmap) -> &SharedPage {
    let ptr = mmap.get_host_address(GuestAddress(layout::SHARED_PAGE)).expect("the shared page is in memory");
    // SAFETY: the shared page lies in guest memory, which `mmap` keeps mapped as long as it
    // lives; it is page aligned and made only of atomics and plain integers, valid for any
    // bytes.
    unsafe { &*ptr.cast::<SharedPage>() }
}
