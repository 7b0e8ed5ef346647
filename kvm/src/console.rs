//! Guest console output: split into lines, each shown with the VM's name and the VCPU that
//! wrote it, e.g. `[hello vcpu2] hello from VCPU 2 of 4`.

use std::io::Write;
use std::sync::Mutex;

/// Longest unfinished line kept per VCPU.
const LINE_MAX: usize = 4096;

#[derive(Debug)]
pub struct Console {
    vm: String,
    /// Whether lines are printed; benchmarks run guests quietly.
    echo: bool,
    /// The unfinished line of each VCPU.
    partial: Mutex<Vec<Vec<u8>>>,
}

impl Console {
    pub fn new(vm: &str, vcpus: u32, echo: bool) -> Console {
        Console { vm: vm.to_owned(), echo, partial: Mutex::new(vec![Vec::new(); vcpus as usize]) }
    }

    /// Takes bytes written by `vcpu`; prints every line they complete. An unfinished line is
    /// printed once it reaches `LINE_MAX` bytes, so a guest that never ends its lines cannot
    /// make the monitor hold ever more memory.
    pub fn write(&self, vcpu: u32, bytes: &[u8]) {
        let mut partial = self.partial.lock().expect("console lock");
        let line = &mut partial[vcpu as usize];
        line.extend_from_slice(bytes);
        let end = match line.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if line.len() >= LINE_MAX => line.len(),
            None => return,
        };
        let complete: Vec<u8> = line.drain(..end).collect();
        self.emit(vcpu, &complete);
    }

    /// Prints what is left of unfinished lines (at VM exit).
    pub fn flush(&self) {
        let mut partial = self.partial.lock().expect("console lock");
        for (vcpu, line) in partial.iter_mut().enumerate() {
            if !line.is_empty() {
                line.push(b'\n');
                self.emit(vcpu as u32, line);
                line.clear();
            }
        }
    }

    fn emit(&self, vcpu: u32, lines: &[u8]) {
        if !self.echo {
            return;
        }
        let text = String::from_utf8_lossy(lines);
        let mut out = std::io::stdout().lock();
        for line in text.lines() {
            let _ = writeln!(out, "[{} vcpu{vcpu}] {line}", self.vm);
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_unfinished_ones_bounded() {
        let console = Console::new("test", 2, false);
        console.write(1, b"one\ntwo\nthr");
        assert_eq!(console.partial.lock().unwrap()[1], b"thr");
        for _ in 0..100 {
            console.write(0, &[b'x'; 1000]);
            assert!(console.partial.lock().unwrap()[0].len() < LINE_MAX + 1000);
        }
        console.flush();
        assert!(console.partial.lock().unwrap().iter().all(Vec::is_empty));
    }
}
