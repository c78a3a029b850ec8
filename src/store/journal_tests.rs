//! The state log as the daemon uses it: saves between snapshots, crashes at any byte of a save,
//! cycles, a full log, damaged records.
use super::*;
use crate::store::journal::{self, CAPACITY, HEADER};
use std::os::unix::fs::FileExt;

fn state_with(n: usize) -> State {
    let mut s = State::new("boot".into());
    for i in 0..n {
        s.allocations.push(alloc(
            &format!("pod-{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
        ));
    }
    s
}

/// The cycle id the snapshot on disk names.
fn snapshot_id(store: &Store) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
    v["journal_id"].as_u64().unwrap()
}

fn on_disk(store: &Store) -> usize {
    Store::new(store.path())
        .load()
        .unwrap()
        .unwrap()
        .allocations
        .len()
}

#[test]
fn saves_between_snapshots_go_to_the_log_and_load_applies_them() {
    let d = tmpdir("log-saves");
    let mut store = Store::new(d.join("state.json"));
    store.snapshot(&state_with(1)).unwrap();
    assert_eq!(
        std::fs::metadata(store.log_path()).unwrap().len(),
        CAPACITY,
        "the log is filled to its size when the cycle starts"
    );
    for n in 2..6 {
        store.save(&state_with(n)).unwrap();
        assert_eq!(on_disk(&store), n);
    }
    // The snapshot itself is untouched by saves in the log.
    let snap: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
    assert_eq!(snap.allocations.len(), 1);
    // A new snapshot starts a new cycle: the old records are still in the log, but are not read.
    store.snapshot(&state_with(2)).unwrap();
    assert_eq!(on_disk(&store), 2);
    store.save(&state_with(3)).unwrap();
    assert_eq!(on_disk(&store), 3);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_crash_at_any_byte_of_a_save_loads_the_save_before() {
    let d = tmpdir("log-torn");
    let mut store = Store::new(d.join("state.json"));
    store.snapshot(&state_with(1)).unwrap();
    store.save(&state_with(2)).unwrap();
    let id = snapshot_id(&store);
    let log = std::fs::read(store.log_path()).unwrap();
    let first = journal::scan(&log[..], id).unwrap().end;
    // What the next save would write, cut short at every length.
    let body = serde_json::to_vec(&state_with(3)).unwrap();
    let record = journal::encode(id, &body);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store.log_path())
        .unwrap();
    for cut in (0..record.len()).step_by(7) {
        file.write_all_at(&vec![0; record.len()], first as u64)
            .unwrap();
        file.write_all_at(&record[..cut], first as u64).unwrap();
        assert_eq!(on_disk(&store), 2, "cut at byte {cut} of the record");
    }
    file.write_all_at(&record, first as u64).unwrap();
    assert_eq!(on_disk(&store), 3, "the complete record");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_full_log_ends_the_cycle_with_a_snapshot() {
    let d = tmpdir("log-full");
    let mut store = Store::new(d.join("state.json"));
    let big = |n| state_with(2000 + n);
    let record = journal::encode(1, &serde_json::to_vec(&big(0)).unwrap()).len() as u64;
    store.snapshot(&big(0)).unwrap();
    let first_id = snapshot_id(&store);
    let fit = CAPACITY / record;
    for n in 1..=fit + 2 {
        store.save(&big(n as usize)).unwrap();
        assert_eq!(on_disk(&store), 2000 + n as usize);
    }
    assert_ne!(
        snapshot_id(&store),
        first_id,
        "a snapshot started a new cycle"
    );
    assert!(!std::fs::read(store.prev_path()).unwrap().is_empty());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_damaged_complete_record_is_refused_with_where_and_what_to_do() {
    let d = tmpdir("log-bad");
    let mut store = Store::new(d.join("state.json"));
    store.snapshot(&state_with(1)).unwrap();
    let id = snapshot_id(&store);
    // A record whose checksum is right but whose body is not a state (a bug, or a disk that
    // returns other data with a valid sum): never silently skipped.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store.log_path())
        .unwrap();
    file.write_all_at(&journal::encode(id, b"{\"schema\": 2, \"boot_"), 0)
        .unwrap();
    let e = Store::new(store.path()).load().unwrap_err();
    assert_eq!(e.kind, Kind::State);
    for want in ["state.json.log is corrupt", "at byte 0", "remove the log"] {
        assert!(e.msg.contains(want), "{want}: {e}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_log_without_its_snapshot_is_not_applied() {
    // The hint for a corrupt state file says "remove both files to start empty": a log left
    // behind belongs to no snapshot and must not come back.
    let d = tmpdir("log-orphan");
    let mut store = Store::new(d.join("state.json"));
    store.snapshot(&state_with(1)).unwrap();
    store.save(&state_with(4)).unwrap();
    std::fs::remove_file(store.path()).unwrap();
    let mut fresh = Store::new(store.path());
    assert_eq!(fresh.load().unwrap(), None);
    fresh.snapshot(&state_with(0)).unwrap();
    assert_eq!(on_disk(&fresh), 0);
    // And a record-sized header is all it takes to recognise a cycle: none of the old one's
    // records is read under the new snapshot's id.
    let log = std::fs::read(fresh.log_path()).unwrap();
    assert_eq!(journal::scan(&log[..], snapshot_id(&fresh)).unwrap().end, 0);
    assert!(log.len() > HEADER);
    std::fs::remove_dir_all(d).unwrap();
}
