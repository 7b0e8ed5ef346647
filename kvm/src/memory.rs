//! A VM's guest memory as the monitor touches it: bounds-checked copies in and out, and the
//! structures both sides share while the guest runs (the shared page, the NIC's rings). Only
//! those, made only of atomics ([`Atomics`]), are ever seen through a reference into guest
//! memory, and only at an address checked to hold them whole and aligned.

use std::marker::PhantomData;
use std::ops::Deref;

use anyhow::Context;
use pv_abi::layout;
use pv_abi::net::NetArea;
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

/// Guest memory: `size` bytes from guest address 0. A clone is another handle on the same
/// memory, which stays mapped while any handle lives.
#[derive(Debug, Clone)]
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
        let page = self.pointer::<SharedPage>(layout::SHARED_PAGE).expect("the shared page is in memory");
        // SAFETY: `pointer` checked that a whole, aligned shared page lies there, in the
        // mapping `self` keeps for as long as the reference lives; any bytes are a valid one
        // and the guest writes it only through atomics (`Atomics`).
        unsafe { &*page }
    }

    /// A handle on the shared page, which keeps guest memory mapped as long as it lives.
    pub fn shared_page_ref(&self) -> SharedPageRef {
        self.reference(layout::SHARED_PAGE).expect("the shared page is in memory")
    }

    /// A handle on the `T` at guest address `addr`, which keeps guest memory mapped as long
    /// as it lives; `None` unless `T` lies wholly in guest memory at an address aligned for it.
    pub fn reference<T: Atomics>(&self, addr: u64) -> Option<GuestRef<T>> {
        let ptr = self.pointer(addr)?;
        Some(GuestRef { mmap: self.mmap.clone(), ptr, _shares: PhantomData })
    }

    /// Where the `T` at `addr` is mapped, if it lies wholly in guest memory, aligned.
    fn pointer<T: Atomics>(&self, addr: u64) -> Option<*const T> {
        if !addr.is_multiple_of(align_of::<T>() as u64) || !self.contains(addr, size_of::<T>() as u64) {
            return None;
        }
        // One region from address 0, page aligned: the bytes from `addr` on are mapped
        // contiguously, and aligned as in guest memory.
        let ptr = self.mmap.get_host_address(GuestAddress(addr)).ok()?;
        Some(ptr.cast::<T>().cast_const())
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

/// ABI structures that the monitor may see through a shared reference into guest memory
/// while the guest writes them.
///
/// # Safety
///
/// Every bit pattern is a valid value of the type, and every field the guest may write is an
/// atomic (or padding the monitor never reads), so that concurrent guest writes are no data
/// race for the monitor's reads.
pub unsafe trait Atomics {}

// SAFETY: the shared page is made only of atomics and reserved integers nobody writes.
unsafe impl Atomics for SharedPage {}
// SAFETY: the NIC area's header is made only of atomic indices and descriptors.
unsafe impl Atomics for NetArea {}

/// A `T` in guest memory, at an address checked to hold it whole and aligned; the guest
/// memory stays mapped while a handle lives.
#[derive(Debug)]
pub struct GuestRef<T> {
    mmap: GuestMemoryMmap,
    ptr: *const T,
    _shares: PhantomData<T>,
}

// SAFETY: a `GuestRef` only hands out `&T`, and `T: Atomics` is made of atomics, which
// threads may share; the mapping it points into is kept alive by `mmap`, which is `Send`.
unsafe impl<T: Atomics + Sync> Send for GuestRef<T> {}
// SAFETY: as for `Send`: shared access to atomics.
unsafe impl<T: Atomics + Sync> Sync for GuestRef<T> {}

impl<T> Clone for GuestRef<T> {
    fn clone(&self) -> GuestRef<T> {
        GuestRef { mmap: self.mmap.clone(), ptr: self.ptr, _shares: PhantomData }
    }
}

impl<T: Atomics> Deref for GuestRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `GuestMemory::reference` checked that a whole, aligned `T` lies in the
        // mapping at `ptr`, which `mmap` keeps mapped as long as `self` lives; any bytes are a
        // valid `T` and the guest writes it only through atomics (`Atomics`).
        unsafe { &*self.ptr }
    }
}

/// A VM's shared page.
pub type SharedPageRef = GuestRef<SharedPage>;
