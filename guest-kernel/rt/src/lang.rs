//! What a freestanding Rust program must provide itself: the memory functions the
//! precompiled `core` links against, unwinding stubs, and the panic handler.

use core::fmt::Write;
use core::panic::PanicInfo;

/// Copies `n` bytes forward.
///
/// # Safety
/// As C's `memcpy`: both ranges valid, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies forward (DF is clear).
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes between possibly overlapping ranges.
///
/// # Safety
/// As C's `memmove`: both ranges valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // The destination does not start inside the source: a forward copy is safe.
        // SAFETY: the caller guarantees both ranges.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: the caller guarantees both ranges; copying backwards from the last byte
    // handles a destination that overlaps the source's tail. DF is restored to clear.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack));
    }
    dest
}

/// Fills `n` bytes with `value`.
///
/// # Safety
/// As C's `memset`: the range is valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` fills forward.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") value as u8,
            options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes.
///
/// # Safety
/// As C's `memcmp`: both ranges valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Compares `n` bytes for equality only.
///
/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the precompiled `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::hypercall::panic(b"_Unwind_Resume called")
}

/// Formats "file:line:column: message" and hands it to the monitor, which ends the VM.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut message = MessageBuf { buf: [0; 1024], len: 0 };
    if let Some(location) = info.location() {
        let _ = write!(message, "{}:{}:{}: ", location.file(), location.line(), location.column());
    }
    let _ = write!(message, "{}", info.message());
    crate::hypercall::panic(&message.buf[..message.len])
}

/// A bounded buffer: a panic message that does not fit is cut, never a second panic.
struct MessageBuf {
    buf: [u8; 1024],
    len: usize,
}

impl Write for MessageBuf {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let take = text.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}
