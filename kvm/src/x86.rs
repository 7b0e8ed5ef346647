//! The x86-64 structures the monitor builds for a ring-3 guest: identity page tables, a GDT
//! and TSS per VCPU, and the registers of a VCPU at start. Pure functions, unit-tested; `vm`
//! writes their output into guest memory, `vcpu` into its VCPUs.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use pv_abi::boot::{BootInfo, VcpuInfo};

use pv_abi::layout::{self, LARGE_PAGE_SIZE, PAGE_SIZE};

pub const KERNEL_CS: u16 = 0x08;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS_SELECTOR: u16 = 0x28;

/// TSS: 0x68 bytes of fixed fields, then an all-zero I/O permission bitmap covering every
/// port (IOPL alone was not honoured for `out` on PVM hosts), then the 0xff end byte.
const TSS_FIXED: usize = 0x68;
const IO_BITMAP_BYTES: usize = 8192;
pub const TSS_SIZE: usize = TSS_FIXED + IO_BITMAP_BYTES + 1;
const TSS_RSP0: usize = 4;
const TSS_IOMAP_BASE: usize = 0x66;

const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
/// Every level carries the user bit: the guest runs at ring 3.
const PTE_TABLE: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// RFLAGS at start: the reserved bit 1 and IOPL 3; interrupts off.
pub const RFLAGS: u64 = 0x2 | 3 << 12;

/// Where and how a VCPU starts (a `vcpu_up`, or VCPU 0 at the image's entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub entry: u64,
    pub stack_top: u64,
    pub arg: u64,
}

/// The general registers of VCPU `id` at `start`, per the entry convention in `pv_abi::boot`.
pub fn start_regs(start: Start, id: u32) -> kvm_regs {
    kvm_regs {
        rip: start.entry,
        rsp: start.stack_top - 8,
        rdi: layout::BOOT_INFO,
        rsi: u64::from(id),
        rdx: start.arg,
        rflags: RFLAGS,
        ..Default::default()
    }
}

/// Address of `BootInfo::vcpu_info[id]`, where GS base points.
pub fn vcpu_info_addr(id: u32) -> u64 {
    layout::BOOT_INFO + std::mem::offset_of!(BootInfo, vcpu_info) as u64 + u64::from(id) * size_of::<VcpuInfo>() as u64
}

/// A page-sized table to be written at a guest address.
#[derive(Debug)]
pub struct Table {
    pub addr: u64,
    pub entries: [u64; 512],
}

/// Identity page tables for `mem_size` bytes (a multiple of 2 MiB, at most 3 GiB): 2 MiB pages
/// except the first 2 MiB, mapped with 4 KiB pages so that page 0 can be left out.
pub fn page_tables(mem_size: u64) -> Vec<Table> {
    assert!(mem_size.is_multiple_of(LARGE_PAGE_SIZE) && mem_size <= layout::MAX_MEM);
    let mut pml4 = [0; 512];
    pml4[0] = layout::PDPT | PTE_TABLE;
    let mut pdpt = [0; 512];
    let mut tables = Vec::new();
    let large_pages = mem_size / LARGE_PAGE_SIZE;
    for (gib, chunk) in (0..large_pages).collect::<Vec<_>>().chunks(512).enumerate() {
        let pd_addr = layout::PD + gib as u64 * PAGE_SIZE;
        pdpt[gib] = pd_addr | PTE_TABLE;
        let mut pd = [0; 512];
        for &page in chunk {
            pd[page as usize % 512] = match page {
                0 => layout::PT_LOW | PTE_TABLE,
                _ => (page * LARGE_PAGE_SIZE) | PTE_TABLE | PTE_LARGE,
            };
        }
        tables.push(Table { addr: pd_addr, entries: pd });
    }
    let mut low = [0; 512];
    for (page, entry) in low.iter_mut().enumerate().skip(1) {
        *entry = (page as u64 * PAGE_SIZE) | PTE_TABLE;
    }
    tables.push(Table { addr: layout::PT_LOW, entries: low });
    tables.push(Table { addr: layout::PDPT, entries: pdpt });
    tables.push(Table { addr: layout::PML4, entries: pml4 });
    tables
}

/// The GDT of one VCPU: null, kernel code64, kernel data, user data, user code64, and the
/// 16-byte descriptor of the VCPU's own TSS at `tss_base`.
pub fn gdt(tss_base: u64) -> [u64; 7] {
    let limit = TSS_SIZE as u64 - 1;
    let tss_low = (limit & 0xffff)
        | (tss_base & 0xff_ffff) << 16
        | 0x89 << 40 // present, 64-bit available TSS
        | (limit >> 16 & 0xf) << 48
        | (tss_base >> 24 & 0xff) << 56;
    [
        0,
        0x00af_9b00_0000_ffff, // 0x08 kernel code64
        0x00cf_9300_0000_ffff, // 0x10 kernel data
        0x00cf_f300_0000_ffff, // 0x18 user data (DPL 3)
        0x00af_fb00_0000_ffff, // 0x20 user code64 (DPL 3)
        tss_low,               // 0x28 TSS, low half
        tss_base >> 32,        // TSS, high half
    ]
}

/// The TSS of one VCPU: ring-0 stack `rsp0`, I/O bitmap allowing every port.
pub fn tss(rsp0: u64) -> Vec<u8> {
    let mut tss = vec![0; TSS_SIZE];
    tss[TSS_RSP0..TSS_RSP0 + 8].copy_from_slice(&rsp0.to_le_bytes());
    tss[TSS_IOMAP_BASE..TSS_IOMAP_BASE + 2].copy_from_slice(&(TSS_FIXED as u16).to_le_bytes());
    tss[TSS_SIZE - 1] = 0xff;
    tss
}

fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        ..Default::default()
    }
}

/// Sets up `sregs` for VCPU `id` to start in 64-bit mode at CPL 3, with GS base `gs_base` and
/// the trap table `idt` (base, limit) if the guest has installed one.
pub fn setup_sregs(sregs: &mut kvm_sregs, id: u32, gs_base: u64, idt: Option<(u64, u16)>) {
    let area = layout::vcpu_area(id);
    sregs.cs = flat_segment(USER_CS, 0xb, true);
    let data = flat_segment(USER_DS, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.ss = data;
    sregs.gs = kvm_segment { base: gs_base, ..data };
    sregs.tr = kvm_segment {
        base: area + layout::TSS_OFFSET,
        limit: TSS_SIZE as u32 - 1,
        selector: TSS_SELECTOR,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment { unusable: 1, ..Default::default() };
    sregs.gdt.base = area + layout::GDT_OFFSET;
    sregs.gdt.limit = (7 * 8 - 1) as u16;
    let (idt_base, idt_limit) = idt.unwrap_or((0, 0));
    sregs.idt.base = idt_base;
    sregs.idt.limit = idt_limit;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = layout::PML4;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU: returns the physical address and whether the user bit
    /// is set at every level, or None if not present.
    fn translate(tables: &[Table], addr: u64) -> Option<(u64, bool)> {
        let table = |at: u64| tables.iter().find(|t| t.addr == at).map(|t| &t.entries);
        let mut at = layout::PML4;
        let mut user = true;
        for (level, shift) in [39u64, 30, 21, 12].iter().enumerate() {
            let entry = table(at)?[(addr >> shift & 511) as usize];
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            user &= entry & PTE_USER != 0;
            let frame = entry & 0x000f_ffff_ffff_f000;
            if level == 2 && entry & PTE_LARGE != 0 {
                return Some((frame + (addr & (LARGE_PAGE_SIZE - 1)), user));
            }
            if level == 3 {
                return Some((frame + (addr & (PAGE_SIZE - 1)), user));
            }
            at = frame;
        }
        None
    }

    #[test]
    fn identity_map_covers_memory_except_page_zero() {
        for mem in [4u64 << 20, 128 << 20, 1 << 30, (1 << 30) + (2 << 20), 3 << 30] {
            let tables = page_tables(mem);
            assert_eq!(translate(&tables, 0), None);
            assert_eq!(translate(&tables, 0xfff), None);
            for addr in [0x1000, 0x1fffff, 0x200000, 0x200123, mem / 2 + 8, mem - 1] {
                assert_eq!(translate(&tables, addr), Some((addr, true)), "mem {mem:#x} addr {addr:#x}");
            }
            assert_eq!(translate(&tables, mem), None, "mem {mem:#x}");
            for table in &tables {
                assert!(table.addr >= layout::PML4 && table.addr < layout::VCPU_AREAS);
            }
        }
    }

    #[test]
    fn gdt_tss_descriptor_encodes_base_and_limit() {
        let base = 0x1234_5678_9abc_d000;
        let gdt = gdt(base);
        let low = gdt[5];
        let decoded_base = (low >> 16 & 0xff_ffff) | (low >> 56 & 0xff) << 24 | gdt[6] << 32;
        assert_eq!(decoded_base, base);
        assert_eq!((low & 0xffff) | (low >> 48 & 0xf) << 16, TSS_SIZE as u64 - 1);
        assert_eq!(low >> 40 & 0xff, 0x89);
        // User descriptors have DPL 3, kernel ones DPL 0; code64 has L set.
        assert_eq!(gdt[3] >> 45 & 3, 3);
        assert_eq!(gdt[4] >> 45 & 3, 3);
        assert_eq!(gdt[1] >> 45 & 3, 0);
        assert_eq!(gdt[4] >> 53 & 1, 1);
        assert_eq!(usize::from(USER_CS & !3) / 8, 4);
        assert_eq!(usize::from(USER_DS & !3) / 8, 3);
        assert_eq!(usize::from(TSS_SELECTOR) / 8, 5);
    }

    #[test]
    fn tss_allows_every_port() {
        let tss = tss(0xdead_b000);
        assert_eq!(u64::from_le_bytes(tss[4..12].try_into().unwrap()), 0xdead_b000);
        assert_eq!(u16::from_le_bytes(tss[0x66..0x68].try_into().unwrap()), 0x68);
        assert!(tss[0x68..0x68 + 8192].iter().all(|&b| b == 0));
        assert_eq!(*tss.last().unwrap(), 0xff);
        assert!(layout::TSS_OFFSET + TSS_SIZE as u64 <= layout::VCPU_AREA_SIZE - 4096, "room for a trap stack");
    }

    #[test]
    fn sregs_start_at_cpl3_in_long_mode() {
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mut sregs, 3, 0x1234, Some((0x5000, 511)));
        assert_eq!(sregs.cs.dpl, 3);
        assert_eq!(sregs.ss.dpl, 3);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.gs.base, 0x1234);
        assert_eq!(sregs.tr.base, layout::vcpu_area(3) + layout::TSS_OFFSET);
        assert_eq!(sregs.gdt.base, layout::vcpu_area(3));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x5000, 511));
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_ne!(sregs.cr4 & CR4_OSFXSR, 0);
    }
}
