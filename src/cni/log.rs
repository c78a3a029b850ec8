//! The plugin's log. It goes to stderr, which the runtime passes on to its own log (containerd's
//! or CRI-O's journal); stdout carries only the CNI result. Warnings and errors by default: a
//! rollback that failed, a device left alone. `TERWAY_LOG=info` or `debug` in the runtime's
//! environment says more (a stale veth removed, a veth not built early, and why).

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct PluginLog {
    /// `ADD 1a2b3c4d5e6f`: which call of which container, as runtimes interleave plugins.
    call: String,
}

impl Log for PluginLog {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            // Nothing to do if stderr is gone: the CNI result on stdout is what counts.
            let _ = writeln!(
                std::io::stderr().lock(),
                "terway plugin {}: {} {}",
                self.call,
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the plugin's log (once; a second call changes nothing).
pub fn init(command: Option<&str>, container_id: Option<&str>, level: Option<&str>) {
    let call = format!(
        "{} {}",
        shown(command.unwrap_or("?"), 8),
        shown(container_id.unwrap_or("?"), 12)
    );
    if log::set_boxed_logger(Box::new(PluginLog { call })).is_ok() {
        log::set_max_level(level_from(level));
    }
}

/// `TERWAY_LOG` as one level (`off`, `error` … `trace`, any case); warnings when unset or not a
/// plain level (the daemon's per-module filters such as `terway::pool=debug`).
pub fn level_from(value: Option<&str>) -> LevelFilter {
    value
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::Warn)
}

/// At most `max` characters of a runtime-given name, control characters and all but
/// `[A-Za-z0-9._-]` replaced, so that a log line stays one line and says nothing forged.
fn shown(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_from_the_environment() {
        assert_eq!(level_from(None), LevelFilter::Warn);
        assert_eq!(level_from(Some("debug")), LevelFilter::Debug);
        assert_eq!(level_from(Some(" INFO ")), LevelFilter::Info);
        assert_eq!(level_from(Some("off")), LevelFilter::Off);
        assert_eq!(level_from(Some("terway::pool=debug")), LevelFilter::Warn);
        assert_eq!(level_from(Some("")), LevelFilter::Warn);
    }

    #[test]
    fn runtime_names_are_cut_and_cleaned() {
        assert_eq!(shown("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(shown("a\nb\u{1b}[31mc", 12), "a?b??31mc");
        assert_eq!(shown("ADD", 8), "ADD");
        assert_eq!(shown("", 8), "");
    }
}
