//! The ELF note that marks a tandem guest and names the ABI version it was built for. The
//! guest places [`ABI_NOTE`] in a `PT_NOTE` segment; the monitor refuses an image without
//! it ("not a tandem guest") or with another version, before anything else about the image.

/// The note's owner name (with its NUL).
pub const NOTE_NAME: &[u8; 7] = b"TANDEM\0";
/// The note's type: its description is the ABI version, a little-endian `u32`.
pub const NT_TANDEM_ABI: u32 = 1;

/// An ELF note as it lies in the image: header, name padded to 4 bytes, description.
#[repr(C, align(4))]
pub struct AbiNote {
    pub namesz: u32,
    pub descsz: u32,
    pub n_type: u32,
    pub name: [u8; 8],
    pub desc: u32,
}

/// The note of this crate's [`ABI_VERSION`](crate::ABI_VERSION).
pub const ABI_NOTE: AbiNote = AbiNote {
    namesz: NOTE_NAME.len() as u32,
    descsz: 4,
    n_type: NT_TANDEM_ABI,
    name: *b"TANDEM\0\0",
    desc: crate::ABI_VERSION,
};

const _: () = assert!(core::mem::size_of::<AbiNote>() == 24);
