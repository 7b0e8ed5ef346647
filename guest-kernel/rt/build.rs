//! Writes the linker script of tandem guests, with the image at `pv_abi::layout::IMAGE_START`,
//! and hands its path to applications as `links` metadata: their build.rs gets it in
//! `DEP_TANDEM_RT_LINKER_SCRIPT` (see the crate doc).

use std::path::PathBuf;
use std::{env, fs};

use pv_abi::layout::IMAGE_START;

fn main() {
    let script = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("link.ld");
    fs::write(&script, linker_script()).unwrap_or_else(|e| panic!("cannot write {}: {e}", script.display()));
    println!("cargo:linker-script={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
}

fn linker_script() -> String {
    format!(
        "\
/* The guest image: one loadable segment at {IMAGE_START:#x} (below it lies the monitor's area:
 * boot info, shared page, page tables, per-VCPU GDT/TSS/trap stacks), plus the note segment
 * that carries the tandem ABI version (pv_abi::note). Written by tandem-rt's build.rs. */
ENTRY(_start)

PHDRS {{
    image PT_LOAD FLAGS(7);
    note PT_NOTE FLAGS(4);
}}

SECTIONS {{
    . = {IMAGE_START:#x};
    .text : {{ *(.text .text.*) }} :image
    .rodata : {{ *(.rodata .rodata.*) }} :image
    .note.tandem : {{ KEEP(*(.note.tandem)) }} :image :note
    /* The precompiled core calls memcpy through the GOT. */
    .got : {{ *(.got .got.*) }} :image
    .data : {{ *(.data .data.*) }} :image
    .bss : {{ *(.bss .bss.*) *(COMMON) }} :image

    /* Unwind tables: the guest aborts on panic. */
    /DISCARD/ : {{ *(.eh_frame .eh_frame_hdr .gcc_except_table .gcc_except_table.* .note.gnu.* .comment) }}
}}
"
    )
}
