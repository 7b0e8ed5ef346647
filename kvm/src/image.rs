//! Guest images: checking an ELF file before anything trusts it, then loading it.
//!
//! A tandem guest marks itself with a note naming the ABI version it was built for
//! (`pv_abi::note`); any other ELF is refused as not a tandem guest, and a guest of another
//! version with both versions named. The monitor parses the file itself (with goblin, which
//! answers a malformed file with an error rather than a panic): a static executable needs
//! nothing but its segments copied.

use std::mem::MaybeUninit;
use std::path::Path;

use goblin::elf::{Elf, header, program_header::PT_LOAD};
use pv_abi::note::{NOTE_NAME, NT_TANDEM_ABI};

use pv_abi::layout;

/// The guest kernel built by build.rs, used when `--kernel` is not given.
pub static DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tandem-guest.elf"));

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read kernel image {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not a usable guest kernel: {0}")]
    Invalid(String),
    /// An ELF without the tandem note: a Hermit application, a Linux binary, ...
    #[error("not a tandem guest (the image carries no tandem ABI note)")]
    NotTandem,
    #[error("the guest was built for tandem ABI version {}, this monitor speaks version {monitor}", guest.map_or_else(|| "(unreadable)".to_owned(), |v| v.to_string()))]
    AbiMismatch { guest: Option<u32>, monitor: u32 },
    #[error("the guest image needs {needed} MiB of memory, more than the {mem_mib} MiB given (--mem)")]
    TooLarge { needed: u64, mem_mib: u64 },
}

fn invalid(what: impl Into<String>) -> ImageError {
    ImageError::Invalid(what.into())
}

/// Reads an image file.
pub fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Read { path: path.display().to_string(), source })
}

/// A checked image: where it goes and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// First byte of the image in guest memory.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// Where VCPU 0 starts.
    pub entry: u64,
    /// The loadable segments, checked to lie in the file.
    segments: Vec<Segment>,
}

/// A loadable segment: bytes `file` of the image go to `addr`, followed by zeroes up to
/// `mem_len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    file: std::ops::Range<usize>,
    addr: u64,
    mem_len: u64,
}

/// Checks that `elf` is a tandem guest of this ABI version (its note, `pv_abi::note`), and a
/// 64-bit x86-64 static executable whose segments lie in the file, in order, at or above
/// `layout::IMAGE_START`, with its entry in a segment.
pub fn check(elf: &[u8]) -> Result<Placement, ImageError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(invalid("not an ELF file (no ELF magic)"));
    }
    let parsed = Elf::parse(elf).map_err(|e| invalid(format!("malformed ELF: {e}")))?;
    let version = parsed.iter_note_headers(elf).into_iter().flatten().flatten().find_map(|note| {
        let ours = note.name.as_bytes() == &NOTE_NAME[..NOTE_NAME.len() - 1] && note.n_type == NT_TANDEM_ABI;
        ours.then(|| note.desc.get(..4).map(|desc| u32::from_le_bytes(desc.try_into().expect("4 bytes"))))
    });
    match version {
        None => return Err(ImageError::NotTandem),
        Some(version) if version != Some(pv_abi::ABI_VERSION) => {
            return Err(ImageError::AbiMismatch { guest: version, monitor: pv_abi::ABI_VERSION });
        }
        Some(_) => {}
    }
    if !parsed.is_64 || !parsed.little_endian || parsed.header.e_machine != header::EM_X86_64 {
        return Err(invalid("not a 64-bit little-endian x86-64 ELF"));
    }
    if parsed.header.e_type != header::ET_EXEC {
        return Err(invalid("not a statically linked executable (ET_EXEC)"));
    }
    let loads: Vec<_> = parsed.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD).collect();
    let (Some(first), Some(last)) = (loads.first(), loads.last()) else {
        return Err(invalid("no loadable segment"));
    };
    let mut previous_end = layout::IMAGE_START;
    for ph in &loads {
        let in_file = ph.p_offset.checked_add(ph.p_filesz).is_some_and(|end| end <= elf.len() as u64);
        let end = ph.p_vaddr.checked_add(ph.p_memsz);
        if !in_file || ph.p_filesz > ph.p_memsz {
            return Err(invalid(format!("segment at {:#x} lies outside the file", ph.p_vaddr)));
        }
        if ph.p_vaddr < previous_end || end.is_none_or(|end| end > layout::MAX_MEM) {
            return Err(invalid(format!(
                "segment at {:#x} overlaps another, lies below {:#x} or beyond {} MiB",
                ph.p_vaddr,
                layout::IMAGE_START,
                layout::MAX_MEM >> 20
            )));
        }
        previous_end = end.unwrap_or(u64::MAX);
    }
    let segments = loads
        .iter()
        .map(|ph| Segment {
            file: ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize,
            addr: ph.p_vaddr,
            mem_len: ph.p_memsz,
        })
        .collect();
    let placement = Placement { start: first.p_vaddr, end: last.p_vaddr + last.p_memsz, entry: parsed.entry, segments };
    if !loads.iter().any(|ph| (ph.p_vaddr..ph.p_vaddr + ph.p_memsz).contains(&placement.entry)) {
        return Err(invalid(format!("entry point {:#x} is not in a loadable segment", placement.entry)));
    }
    Ok(placement)
}

/// Loads a checked image into `memory` (guest memory seen from the host, starting at guest
/// address 0), whose heap ends at `heap_end` (what lies above is the monitor's: the boot
/// stack, the NIC area): copies each loadable segment's file bytes and zeroes the rest of it.
pub fn load(elf: &[u8], memory: &mut [MaybeUninit<u8>], heap_end: u64) -> Result<Placement, ImageError> {
    let placement = check(elf)?;
    let needed = placement.end + layout::MIN_HEAP + (memory.len() as u64).saturating_sub(heap_end);
    if needed > memory.len() as u64 {
        return Err(ImageError::TooLarge { needed: needed.div_ceil(1 << 20), mem_mib: memory.len() as u64 >> 20 });
    }
    for segment in &placement.segments {
        // `check` proved the file range in bounds, and the memory range is below `needed`.
        let file = &elf[segment.file.clone()];
        let target = &mut memory[segment.addr as usize..][..segment.mem_len as usize];
        let (data, bss) = target.split_at_mut(file.len());
        for (dst, &src) in data.iter_mut().zip(file) {
            dst.write(src);
        }
        bss.fill(MaybeUninit::new(0));
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_guest_is_accepted() {
        let placement = check(DEFAULT_GUEST).expect("the embedded guest passes its own checks");
        assert_eq!(placement.start, layout::IMAGE_START);
        assert!(placement.entry >= placement.start && placement.entry < placement.end);
    }

    #[test]
    fn garbage_is_refused() {
        for bytes in [&b""[..], b"hello", b"#!/bin/sh\necho hi\n", &[0x7f, b'E', b'L', b'F']] {
            assert!(matches!(check(bytes), Err(ImageError::Invalid(_))));
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_refused_without_panicking() {
        let parsed = Elf::parse(DEFAULT_GUEST).unwrap();
        let data_end = parsed.program_headers.iter().map(|ph| ph.p_offset + ph.p_filesz).max().unwrap();
        for len in (0..data_end as usize).step_by(997) {
            assert!(check(&DEFAULT_GUEST[..len]).is_err(), "truncated to {len} bytes");
        }
        // Flip each byte of the headers in turn: the checker must answer, never panic, and
        // whatever it accepts must still load.
        let mut memory = vec![MaybeUninit::new(0u8); 32 << 20];
        let heap_end = memory.len() as u64 - layout::BOOT_STACK_SIZE;
        for at in 0..0x200 {
            let mut elf = DEFAULT_GUEST.to_vec();
            elf[at] ^= 0xa5;
            if check(&elf).is_ok() {
                let _ = load(&elf, &mut memory, heap_end);
            }
        }
    }

    /// The embedded guest with its note's ABI version set to `version`.
    fn guest_of_version(version: u32) -> Vec<u8> {
        let mut elf = DEFAULT_GUEST.to_vec();
        let note = pv_abi::note::ABI_NOTE;
        let mut marker = Vec::new();
        for word in [note.namesz, note.descsz, note.n_type] {
            marker.extend_from_slice(&word.to_le_bytes());
        }
        marker.extend_from_slice(&note.name);
        let at = elf.windows(marker.len()).position(|w| w == marker).expect("the guest carries the note");
        elf[at + marker.len()..][..4].copy_from_slice(&version.to_le_bytes());
        elf
    }

    #[test]
    fn a_guest_of_another_abi_version_is_refused_naming_both() {
        let error = check(&guest_of_version(pv_abi::ABI_VERSION + 1)).unwrap_err();
        assert!(matches!(error, ImageError::AbiMismatch { guest: Some(v), monitor } if v == monitor + 1));
        let message = error.to_string();
        assert!(message.contains(&format!("version {}", pv_abi::ABI_VERSION + 1)), "{message}");
        assert!(message.contains(&format!("speaks version {}", pv_abi::ABI_VERSION)), "{message}");
        assert!(check(&guest_of_version(pv_abi::ABI_VERSION)).is_ok());
    }

    #[test]
    fn an_elf_without_the_tandem_note_is_not_a_tandem_guest() {
        let host = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(check(&host), Err(ImageError::NotTandem)));
        let mut elf = DEFAULT_GUEST.to_vec();
        let at = elf.windows(7).position(|w| w == pv_abi::note::NOTE_NAME).unwrap();
        elf[at] = b'X';
        assert!(matches!(check(&elf), Err(ImageError::NotTandem)));
    }

    #[test]
    fn memory_too_small_is_reported() {
        let mut memory = vec![MaybeUninit::new(0u8); 2 << 20];
        let heap_end = memory.len() as u64 - layout::BOOT_STACK_SIZE;
        assert!(matches!(load(DEFAULT_GUEST, &mut memory, heap_end), Err(ImageError::TooLarge { .. })));
    }

    #[test]
    fn what_the_monitor_keeps_above_the_heap_counts_against_memory() {
        let end = check(DEFAULT_GUEST).unwrap().end;
        // Just room for the heap below the boot stack; then the NIC area takes it.
        let size = (end + layout::MIN_HEAP + layout::BOOT_STACK_SIZE).next_multiple_of(4096);
        let mut memory = vec![MaybeUninit::new(0u8); size as usize];
        assert!(load(DEFAULT_GUEST, &mut memory, size - layout::BOOT_STACK_SIZE).is_ok());
        let heap_end = size - layout::BOOT_STACK_SIZE - pv_abi::net::NET_AREA_SIZE;
        let error = load(DEFAULT_GUEST, &mut memory, heap_end).unwrap_err();
        assert!(matches!(error, ImageError::TooLarge { .. }), "{error}");
    }
}
