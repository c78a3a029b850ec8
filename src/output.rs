//! Output of the one-shot commands (the operator CLI, `terway emulate --print-config`), whose
//! stdout may be a pipe that is already closed: `terway mapping | head -1`.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `BrokenPipe`, which `println!`
//! turns into a panic (exit 101). SIGPIPE stays ignored process-wide (the daemon and the emulator
//! write to sockets whose peers may go away); the commands print through [`print`] instead, once,
//! at the end. A closed stdout means nobody reads the rest: the text is dropped without a word and
//! the command ends with the status it would have had anyway, so `terway config check bad.json |
//! head -1` still fails under `set -o pipefail` and a good file still passes.

use crate::{Error, Result};
use std::io::{ErrorKind, Write};

/// Writes `text` to stdout (locked, flushed). A closed pipe is not an error; any other write
/// failure (a full disk behind a redirect) is.
pub fn print(text: &str) -> Result<()> {
    write_unless_closed(&mut std::io::stdout().lock(), text.as_bytes())
        .map_err(|e| Error::io("write to stdout", e))
}

/// One diagnostic line on stderr; never panics, whatever stderr is.
pub fn eprint_line(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn write_unless_closed(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    match w.write_all(bytes).and_then(|_| w.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_quiet_other_errors_are_not() {
        assert!(write_unless_closed(&mut Failing(ErrorKind::BrokenPipe), b"x").is_ok());
        let e = write_unless_closed(&mut Failing(ErrorKind::StorageFull), b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        let mut buf = Vec::new();
        write_unless_closed(&mut buf, b"text\n").unwrap();
        assert_eq!(buf, b"text\n");
    }

    #[test]
    fn a_real_closed_pipe_is_quiet() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        drop(reader);
        assert!(write_unless_closed(&mut writer, &[b'x'; 100_000]).is_ok());
    }
}
