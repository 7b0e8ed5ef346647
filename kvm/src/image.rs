//! Guest images: checking an ELF file before anything trusts it, then loading it.
//!
//! The guest marks itself with hermit-entry's entry-version note. The image is loaded here
//! rather than by hermit-entry's loader, whose parser panics on malformed files (a monitor
//! must answer a bad image with an error); a static executable needs nothing but its
//! segments copied.

use std::mem::MaybeUninit;
use std::path::Path;

use goblin::elf::{Elf, header, program_header::PT_LOAD};

use pv_abi::layout;

/// The guest kernel built by build.rs, used when `--kernel` is not given.
pub static DEFAULT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tandem-guest.elf"));

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read kernel image {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not a usable guest kernel: {0}")]
    Invalid(String),
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

/// Note type and version of hermit-entry's entry-version note (name "HERMIT").
const NT_HERMIT_ENTRY_VERSION: u32 = 0x5a00;
const HERMIT_ENTRY_VERSION: u8 = 4;

/// Checks that `elf` is a 64-bit x86-64 static executable whose segments lie in the file, in
/// order, at or above `layout::IMAGE_START`, with its entry in a segment and hermit-entry's
/// entry-version note.
pub fn check(elf: &[u8]) -> Result<Placement, ImageError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(invalid("not an ELF file (no ELF magic)"));
    }
    let parsed = Elf::parse(elf).map_err(|e| invalid(format!("malformed ELF: {e}")))?;
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
    let has_entry_note = parsed.iter_note_headers(elf).into_iter().flatten().any(|note| {
        note.is_ok_and(|n| {
            n.name == "HERMIT" && n.n_type == NT_HERMIT_ENTRY_VERSION && n.desc.first() == Some(&HERMIT_ENTRY_VERSION)
        })
    });
    if !has_entry_note {
        return Err(invalid("no hermit-entry version note (is this a tandem guest?)"));
    }
    Ok(placement)
}

/// Loads a checked image into `memory` (guest memory seen from the host, starting at guest
/// address 0): copies each loadable segment's file bytes and zeroes the rest of it.
pub fn load(elf: &[u8], memory: &mut [MaybeUninit<u8>]) -> Result<Placement, ImageError> {
    let placement = check(elf)?;
    let needed = placement.end + layout::MIN_HEAP + layout::BOOT_STACK_SIZE;
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
        for at in 0..0x200 {
            let mut elf = DEFAULT_GUEST.to_vec();
            elf[at] ^= 0xa5;
            if check(&elf).is_ok() {
                let _ = load(&elf, &mut memory);
            }
        }
    }

    #[test]
    fn memory_too_small_is_reported() {
        let mut memory = vec![MaybeUninit::new(0u8); 2 << 20];
        assert!(matches!(load(DEFAULT_GUEST, &mut memory), Err(ImageError::TooLarge { .. })));
    }
}
