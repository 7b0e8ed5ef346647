//! `print!` and `println!`: text is formatted into a line buffer on the stack and written with
//! one hypercall per line (each exit costs tens of microseconds).

use core::fmt::{self, Write};

const LINE_MAX: usize = 512;

struct LineWriter {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            let _ = crate::hypercall::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == LINE_MAX {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

/// Writes formatted text to the console, in one hypercall per line; what [`print!`](crate::print!) and
/// [`println!`](crate::println!) call.
pub fn print(args: fmt::Arguments<'_>) {
    let mut writer = LineWriter { buf: [0; LINE_MAX], len: 0 };
    let _ = writer.write_fmt(args);
    writer.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints to the console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
