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
pub struct Scan {
    /// The newest complete record of the cycle: where it starts and its body.
    pub last: Option<(u64, Vec<u8>)>,
    /// Where the next record goes.
    pub end: u64,
    /// A record of the cycle was started at `end` but is incomplete (a crash during its write).
    pub torn: bool,
}

/// Positioned reads: the log file, or bytes in memory (tests).
pub trait ReadAt {
    /// Fills `buf` from `at`; `Ok(false)` when the log ends before `buf` is full.
    fn read_at_exact(&self, buf: &mut [u8], at: u64) -> std::io::Result<bool>;
    fn size(&self) -> std::io::Result<u64>;
}

impl ReadAt for [u8] {
    fn read_at_exact(&self, buf: &mut [u8], at: u64) -> std::io::Result<bool> {
        let at = at as usize;
        match self.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for File {
    fn read_at_exact(&self, buf: &mut [u8], at: u64) -> std::io::Result<bool> {
        match self.read_exact_at(buf, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// The records of cycle `id`, read from the start of the log until the first that is not one.
/// Holds one record in memory at a time, whatever the log's size.
pub fn scan(log: &(impl ReadAt + ?Sized), id: u64) -> std::io::Result<Scan> {
    let mut at = 0u64;
    let mut last = None;
    let mut torn = false;
    let mut head = [0u8; HEADER];
    let size = log.size()?;
    while log.read_at_exact(&mut head, at)? {
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&head[r]);
            u64::from_le_bytes(b)
        };
        if head[0..4] != MAGIC || word(8..16) != id {
            break;
        }
        let (len, crc) = (word(4..8) as usize, word(16..20) as u32);
        // A length beyond the log is a torn header, never an allocation of that size.
        let mut body = Vec::new();
        let complete = at + (HEADER + len) as u64 <= size && {
            body.resize(len, 0);
            log.read_at_exact(&mut body, at + HEADER as u64)?
        };
        if !complete || checksum(id, &body) != crc {
            torn = true;
            break;
        }
        last = Some((at, body));
        at += (HEADER + len) as u64;
    }
    Ok(Scan {
        last,
        end: at,
        torn,
    })
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
            let zeros = [0u8; 64 << 10];
            let mut at = len;
            while at < capacity {
                let n = (capacity - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at).map_err(what)?;
                at += n as u64;
            }
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
        let s = scan(&log[..], 7).unwrap();
        assert_eq!(s.last, Some(((HEADER + 3) as u64, b"two".to_vec())));
        assert_eq!(s.end, (2 * HEADER + 6) as u64);
        assert!(!s.torn);
    }

    #[test]
    fn records_of_another_cycle_are_not_read() {
        // A new cycle (8) overwrote the start of the log; the rest is the old cycle's.
        let mut log = log_of(&[(8, b"new")]);
        log.extend(log_of(&[(7, b"old-two"), (7, b"old-three")]));
        let last = |id| scan(&log[..], id).unwrap().last.map(|l| l.1);
        assert_eq!(last(8), Some(b"new".to_vec()));
        assert_eq!(last(7), None, "the old cycle no longer starts at 0");
        assert_eq!(last(9), None);
    }

    #[test]
    fn a_torn_record_is_ignored_and_reported() {
        let full = log_of(&[(3, b"kept"), (3, b"cut short")]);
        for cut in HEADER + 4 + 1..full.len() {
            let s = scan(&full[..cut], 3).unwrap();
            assert_eq!(s.last, Some((0, b"kept".to_vec())), "cut at {cut}");
            assert_eq!(s.end, (HEADER + 4) as u64);
            assert_eq!(s.torn, cut >= HEADER + 4 + HEADER, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut log = log_of(&[(3, b"kept"), (3, b"changed")]);
        let n = log.len();
        log[n - 2] ^= 1;
        let s = scan(&log[..], 3).unwrap();
        assert_eq!(s.last.map(|l| l.1), Some(b"kept".to_vec()));
        assert!(s.torn);
    }

    #[test]
    fn a_length_beyond_the_log_is_a_torn_record_not_an_allocation() {
        let mut log = log_of(&[(5, b"kept")]);
        let mut bogus = encode(5, b"x");
        bogus[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        log.extend(bogus);
        let s = scan(&log[..], 5).unwrap();
        assert_eq!(s.last.map(|l| l.1), Some(b"kept".to_vec()));
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
            let s = scan(&log[..], id).unwrap();
            prop_assert_eq!(s.last.map(|l| l.1), bodies.last().cloned());
            prop_assert_eq!(s.end, written as u64);
        }
    }
}
