//! The state log `<state>.log`: saves between two snapshots of the state file.
//!
//! A snapshot is three synchronous disk commits (the new file, the rename, the directory). A save
//! in the log is one: the whole state is written, with a checksum, into space the log already
//! owns (the file is filled with zeros once, when a cycle starts), then `fdatasync`ed. Writing
//! over allocated blocks changes no file-system metadata, so that sync does not wait for a
//! journal commit that also carries whatever else the node is writing.
//!
//! Each record names its cycle: the id the snapshot it follows carries (`State::journal_id`).
//! Loading takes the snapshot, then the last complete record of that cycle. Records of an
//! earlier cycle that a new cycle has not overwritten yet carry another id and are ignored; a
//! record cut short by a crash fails its checksum and is ignored too (it was never
//! acknowledged: a reply goes out only after the sync).

use crate::{Error, Kind, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"TWJ1";
/// magic | body length (u32 LE) | cycle id (u64 LE) | CRC-32 of id and body (u32 LE) | zero.
pub const HEADER: usize = 24;
/// The log's default size: a cycle ends (with a snapshot) when the next record does not fit. At 200
/// pods a record is some 70 KiB, so a snapshot comes every ~60 saves.
pub const CAPACITY: u64 = 4 << 20;

/// One record: its header and the state's bytes.
pub fn encode(id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&checksum(id, body).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body);
    out
}

fn checksum(id: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// What a scan of the log found for one cycle.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    /// The newest complete record of the cycle: where it starts and its body.
    pub last: Option<(usize, &'a [u8])>,
    /// Where the next record goes.
    pub end: usize,
    /// A record of the cycle was started at `end` but is incomplete (a crash during its write).
    pub torn: bool,
}

/// The records of cycle `id`, read from the start of the log until the first that is not one.
pub fn scan(log: &[u8], id: u64) -> Scan<'_> {
    let mut at = 0;
    let mut last = None;
    let mut torn = false;
    while let Some(head) = log.get(at..at + HEADER) {
        let field = |r: std::ops::Range<usize>| &head[r];
        let magic_ok = field(0..4) == MAGIC;
        let rec_id = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        if !magic_ok || rec_id != id {
            break;
        }
        let len = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(field(16..20).try_into().unwrap_or_default());
        let body = log.get(at + HEADER..at + HEADER + len);
        match body {
            Some(body) if checksum(id, body) == crc => {
                last = Some((at, body));
                at += HEADER + len;
            }
            _ => {
                torn = true;
                break;
            }
        }
    }
    Scan {
        last,
        end: at,
        torn,
    }
}

/// The open log of the current cycle.
pub struct Log {
    path: PathBuf,
    file: File,
    id: u64,
    end: u64,
    capacity: u64,
}

impl Log {
    /// Starts cycle `id` in the log at `path` (opened by the caller), filling it to `capacity`
    /// with zeros first if it is shorter. Call only once the snapshot with `id` is durable.
    pub fn start(path: &Path, file: File, id: u64, capacity: u64) -> Result<Log> {
        let what =
            |e: std::io::Error| Error::io(format!("prepare state log {}", path.display()), e);
        let len = file.metadata().map_err(what)?.len();
        if len < capacity {
            let zeros = vec![0u8; (capacity - len) as usize];
            file.write_all_at(&zeros, len).map_err(what)?;
            file.sync_all().map_err(what)?;
            sync_parent(path).map_err(what)?;
        }
        Ok(Log {
            path: path.to_path_buf(),
            file,
            id,
            end: 0,
            capacity: len.max(capacity),
        })
    }

    /// Writes `body` as the cycle's next record and waits until it is on disk. `Ok(false)`: it
    /// does not fit, the caller takes a snapshot instead.
    pub fn append(&mut self, body: &[u8]) -> Result<bool> {
        let record = encode(self.id, body);
        if self.end + record.len() as u64 > self.capacity {
            return Ok(false);
        }
        let what = |e: std::io::Error| {
            Error::new(
                Kind::State,
                format!("write state log {}: {e}", self.path.display()),
            )
        };
        self.file.write_all_at(&record, self.end).map_err(what)?;
        self.file.sync_data().map_err(what)?;
        self.end += record.len() as u64;
        Ok(true)
    }
}

/// Makes a new directory entry durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut log = Vec::new();
        for (id, body) in records {
            log.extend(encode(*id, body));
        }
        log
    }

    #[test]
    fn the_last_record_of_the_cycle_wins() {
        let mut log = log_of(&[(7, b"one"), (7, b"two")]);
        log.extend([0; 64]);
        let s = scan(&log, 7);
        assert_eq!(s.last, Some((HEADER + 3, &b"two"[..])));
        assert_eq!(s.end, 2 * HEADER + 6);
        assert!(!s.torn);
    }

    #[test]
    fn records_of_another_cycle_are_not_read() {
        // A new cycle (8) overwrote the start of the log; the rest is the old cycle's.
        let mut log = log_of(&[(8, b"new")]);
        log.extend(log_of(&[(7, b"old-two"), (7, b"old-three")]));
        assert_eq!(scan(&log, 8).last.map(|l| l.1), Some(&b"new"[..]));
        assert_eq!(
            scan(&log, 7).last,
            None,
            "the old cycle no longer starts at 0"
        );
        assert_eq!(scan(&log, 9).last, None);
    }

    #[test]
    fn a_torn_record_is_ignored_and_reported() {
        let full = log_of(&[(3, b"kept"), (3, b"cut short")]);
        for cut in HEADER + 4 + 1..full.len() {
            let s = scan(&full[..cut], 3);
            assert_eq!(s.last, Some((0, &b"kept"[..])), "cut at {cut}");
            assert_eq!(s.end, HEADER + 4);
            assert_eq!(s.torn, cut >= HEADER + 4 + HEADER, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut log = log_of(&[(3, b"kept"), (3, b"changed")]);
        let n = log.len();
        log[n - 2] ^= 1;
        let s = scan(&log, 3);
        assert_eq!(s.last.map(|l| l.1), Some(&b"kept"[..]));
        assert!(s.torn);
    }

    proptest! {
        /// Whatever bytes follow the records written in this cycle (another cycle's records, a
        /// torn write, garbage), the scan finds exactly the last record written, never more
        /// (random bytes pass as a record of the cycle with odds of 2^-96).
        #[test]
        fn any_tail_after_the_cycle_is_never_taken_for_a_record(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..5),
            tail in prop::collection::vec(any::<u8>(), 0..200),
            id in 1u64..u64::MAX,
        ) {
            let mut log = Vec::new();
            for b in &bodies {
                log.extend(encode(id, b));
            }
            let written = log.len();
            log.extend(&tail);
            let s = scan(&log, id);
            prop_assert_eq!(s.last.map(|l| l.1.to_vec()), bodies.last().cloned());
            prop_assert_eq!(s.end, written);
        }
    }
}
