//! Switching between stacks. A switch saves the callee-saved registers on the old stack,
//! stores its pointer, loads the new one and pops the registers saved there. Everything else
//! is caller-saved, so an ordinary function call to [`switch`] is all a thread needs.

/// Saves the current context at `*save` and resumes the one saved in `to`.
///
/// # Safety
/// `to` must be a stack pointer saved by `switch` or prepared by [`prepare_stack`], whose
/// stack is alive and not in use elsewhere.
#[unsafe(naked)]
pub unsafe extern "C" fn switch(save: *mut usize, to: usize) {
    core::arch::naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    )
}

/// Lays out a new stack so that the first `switch` to it enters `entry(arg)` with the stack
/// aligned as after a call. Returns the stack pointer to switch to.
pub fn prepare_stack(stack: &mut [u8], entry: extern "C" fn(usize) -> !, arg: usize) -> usize {
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // In pop order: r15, r14, r13 (= entry), r12 (= arg), rbx, rbp, the trampoline as return
    // address, and padding so that the trampoline starts with rsp = top - 8, as after a call.
    let frame = [0, 0, entry as *const () as usize, arg, 0, 0, trampoline as *const () as usize, 0];
    let sp = top - frame.len() * 8;
    for (i, word) in frame.iter().enumerate() {
        // SAFETY: `sp..top` lies inside `stack`, which the caller owns.
        unsafe { ((sp + i * 8) as *mut usize).write(*word) };
    }
    sp
}

/// First code of a new thread: moves the argument and entry from r12 and r13 into place.
#[unsafe(naked)]
extern "C" fn trampoline() -> ! {
    core::arch::naked_asm!("mov rdi, r12", "jmp r13")
}
