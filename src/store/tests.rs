use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("terway-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn alloc(id: &str, ip: &str) -> StoredAllocation {
    StoredAllocation {
        key: AttachKey::new("terway", id, "eth0"),
        pod: PodRef::default(),
        netns: "/run/netns/x".into(),
        address: PodAddress::v4(ip.parse().unwrap(), 32, None),
        datapath: Datapath::Veth,
        created_unix: 1,
    }
}

#[test]
fn save_load_round_trip_keeps_previous_copy() {
    let d = tmpdir("rt");
    let mut store = Store::new(d.join("state.json"));
    assert_eq!(store.load().unwrap(), None);
    let mut s = State::new("boot".into());
    s.allocations.push(alloc("a", "10.0.0.2"));
    store.snapshot(&s).unwrap();
    s.allocations.push(alloc("b", "10.0.0.3"));
    store.snapshot(&s).unwrap();
    assert_eq!(store.load().unwrap().unwrap(), s);
    let prev: State = serde_json::from_slice(&std::fs::read(store.prev_path()).unwrap()).unwrap();
    assert_eq!(prev.allocations.len(), 1);
    assert!(!d.join("state.json.tmp").exists());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn corrupt_file_names_file_and_previous_copy() {
    let d = tmpdir("corrupt");
    let mut store = Store::new(d.join("state.json"));
    store.snapshot(&State::new("boot".into())).unwrap();
    store.snapshot(&State::new("boot".into())).unwrap();
    std::fs::write(store.path(), b"{\"schema\":1,\"boot_id\":").unwrap();
    let e = store.load().unwrap_err();
    assert_eq!(e.kind, Kind::State);
    assert!(e.msg.contains("state.json is corrupt"), "{e}");
    assert!(e.msg.contains("state.json.prev"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn one_lock_holder_per_state_file() {
    let d = tmpdir("lock");
    let store = Store::new(d.join("state.json"));
    let held = store.lock().unwrap();
    let e = store.lock().err().unwrap();
    assert!(e.msg.contains("another terway daemon"), "{e}");
    drop(held);
    assert!(store.lock().is_ok());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let d = tmpdir("schema");
    let store = Store::new(d.join("state.json"));
    std::fs::write(store.path(), br#"{"schema":99,"boot_id":"x"}"#).unwrap();
    assert!(store.load().unwrap_err().msg.contains("newer version"));
    std::fs::remove_dir_all(d).unwrap();
}

/// Runs `f` on a thread and fails the test instead of hanging when it blocks.
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("blocked on a non-regular file")
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn a_fifo_state_file_is_refused_without_blocking() {
    let d = tmpdir("fifo");
    let store = Store::new(d.join("state.json"));
    mkfifo(store.path());
    // Even when the FIFO appears after the check looked: opened without blocking, refused.
    let fifo = store.path().to_path_buf();
    let e = within_5s(move || open_regular(OpenOptions::new().read(true), &fifo).unwrap_err());
    assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
    let (s1, s2) = (Store::new(store.path()), Store::new(store.path()));
    for e in [
        within_5s(move || s1.load().unwrap_err()),
        within_5s(move || s2.lock().err().unwrap()),
    ] {
        assert_eq!(e.kind, Kind::State);
        assert!(
            e.msg
                .contains(&format!("{} is a FIFO", store.path().display())),
            "{e}"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn every_companion_file_must_be_regular() {
    for suffix in [".prev", ".tmp", ".prev.tmp", ".lock", ".log"] {
        let d = tmpdir(&format!("companion{suffix}"));
        let store = Store::new(d.join("state.json"));
        let companion = store.sibling(suffix);
        mkfifo(&companion);
        let s = Store::new(store.path());
        let e = within_5s(move || s.lock().err().unwrap());
        assert_eq!(e.kind, Kind::State);
        assert!(
            e.msg
                .contains(&format!("{} is a FIFO", companion.display())),
            "{e}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_fifo_tmp_file_fails_the_save_without_blocking() {
    let d = tmpdir("fifotmp");
    let store = Store::new(d.join("state.json"));
    mkfifo(&store.sibling(".tmp"));
    let mut store = store;
    let e = within_5s(move || store.save(&State::new("boot".into())).unwrap_err());
    assert!(e.msg.contains("state.json.tmp is a FIFO"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn directories_sockets_devices_and_links_are_named() {
    let d = tmpdir("kinds");
    let dir = d.join("dir");
    std::fs::create_dir(&dir).unwrap();
    let sock = d.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let file = d.join("file");
    std::fs::write(&file, br#"{"schema":1,"boot_id":"b"}"#).unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (path, what) in [
        (dir.as_path(), "a directory"),
        (sock.as_path(), "a socket"),
        (Path::new("/dev/null"), "a character device"),
        (link.as_path(), "a symbolic link"),
    ] {
        let e = Store::new(path).load().unwrap_err();
        assert_eq!(e.kind, Kind::State);
        assert!(
            e.msg.contains(&format!("{} is {what}", path.display())),
            "{e}"
        );
    }
    // The regular file the link points to is fine.
    assert!(Store::new(&file).load().unwrap().is_some());
    assert!(!ensure_regular(&d.join("absent")).unwrap());
    std::fs::remove_dir_all(d).unwrap();
}

/// A state file with every section, as a daemon in each mode writes it.
const SAMPLE: &str = r#"{
  "schema": 1,
  "boot_id": "6f1c2d3e-0000-4000-8000-000000000001",
  "allocations": [{"key": {"container_id": "c1", "ifname": "eth0"}, "network": "terway",
    "pod": {"namespace": "default", "name": "web-0", "uid": "u-1"},
    "netns": "/var/run/netns/cni-1", "ipv4": "10.0.0.6", "created_unix": 1700000000}],
  "vpc": {"pod_cidr": "10.244.1.0/24", "cursor": "10.244.1.7"},
  "eni": {"instance_id": "i-1", "instance_type": "ecs.g7.large",
    "limits": {"eni_quantity": 3, "eni_private_ip_quantity": 10, "eni_total_quantity": 5},
    "pool": {
      "enis": [{"id": "eni-1", "mac": "00:16:3e:00:00:01", "vswitch_id": "vsw-1",
        "vswitch_cidr": "10.0.0.0/24", "gateway": "10.0.0.253", "primary_ip": "10.0.0.5",
        "ips": [{"ip": "10.0.0.5", "since": 1},
                {"ip": "10.0.0.6", "owner": {"container_id": "c1", "ifname": "eth0"},
                 "pod": "default/web-0", "since": 5},
                {"ip": "10.0.0.7", "since": 2, "invalid": true, "releasing": true}],
        "full": true, "gone": false, "deleting": true}],
      "blocked": [{"id": "vsw-2", "until_ms": 99,
        "reason": "The specified VSwitch \"vsw-2\" has not enough IpAddress."}]}}
}"#;

/// Whatever `load` accepts, `save` writes back and `load` reads again unchanged: as a snapshot
/// (a store without a log cycle), then as a record of the cycle that snapshot started.
fn round_trips(store: &mut Store, s: State) {
    store.save(&s).unwrap();
    assert_eq!(store.load().unwrap(), Some(s.clone()));
    store.save(&s).unwrap();
    assert_eq!(store.load().unwrap(), Some(s));
}

/// Loads `bytes` as the state file: an answer, never a panic, and a loaded state round trips.
/// The store starts afresh: a log cycle of an earlier case must not take the save.
fn load_bytes(store: &mut Store, bytes: &[u8]) {
    *store = Store::new(store.path().to_path_buf());
    std::fs::write(store.path(), bytes).unwrap();
    match store.load() {
        Ok(Some(s)) => round_trips(store, s),
        Ok(None) => panic!("the file is there"),
        Err(e) => assert_eq!(e.kind, Kind::State, "{e}"),
    }
}

#[test]
fn the_sample_loads_and_round_trips() {
    let d = tmpdir("sample");
    let mut store = Store::new(d.join("state.json"));
    std::fs::write(store.path(), SAMPLE).unwrap();
    let s = store.load().unwrap().unwrap();
    assert!(s.vpc.is_some() && s.eni.is_some() && s.allocations.len() == 1);
    round_trips(&mut store, s.clone());
    // Once more: the first save was a snapshot (no log cycle yet), this one goes to the log.
    round_trips(&mut store, s);
    std::fs::remove_dir_all(d).unwrap();
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const KEYS: &[&str] = &[
        "schema",
        "boot_id",
        "allocations",
        "vpc",
        "eni",
        "key",
        "container_id",
        "ifname",
        "network",
        "pod",
        "netns",
        "ipv4",
        "created_unix",
        "pod_cidr",
        "cursor",
        "pool",
        "enis",
        "ips",
        "ip",
        "owner",
        "since",
        "invalid",
        "releasing",
        "blocked",
        "limits",
    ];

    fn any_json() -> impl Strategy<Value = Value> {
        let odd = prop::sample::select(vec![
            "10.0.0.1",
            "10.0.0.0/33",
            "256.0.0.1",
            "0.0.0.0/0",
            "",
            "\u{0}",
            "ÿ",
            "1e400",
        ])
        .prop_map(String::from);
        crate::prop_support::any_json(KEYS, odd)
    }

    #[derive(Debug, Clone)]
    enum Seg {
        Key(String),
        Index(usize),
    }

    /// Every node of `v` by its path, the root first.
    fn paths(v: &Value, here: Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(here.clone());
        let children: Vec<(Seg, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, x)| (Seg::Key(k.clone()), x)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| (Seg::Index(i), x))
                .collect(),
            _ => Vec::new(),
        };
        for (seg, child) in children {
            let mut p = here.clone();
            p.push(seg);
            paths(child, p, out);
        }
    }

    fn node<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
        path.iter().fold(v, |v, seg| match seg {
            Seg::Key(k) => &mut v[k.as_str()],
            Seg::Index(i) => &mut v[*i],
        })
    }

    #[derive(Debug, Clone)]
    enum Change {
        Replace(Value),
        Remove,
        /// Another value of the same JSON type: a string, a number, a bool.
        SameKind(String, u64, bool),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            any_json().prop_map(Change::Replace),
            Just(Change::Remove),
            (any::<String>(), any::<u64>(), any::<bool>()).prop_map(|(s, n, b)| Change::SameKind(
                s,
                n % 5000,
                b
            )),
        ]
    }

    /// Changes the node at `at` among all of them.
    fn edit(v: &mut Value, at: prop::sample::Index, change: Change) {
        let mut all = Vec::new();
        paths(v, Vec::new(), &mut all);
        let path = at.get(&all).clone();
        match (change, path.split_last()) {
            (Change::Replace(x), _) => *node(v, &path) = x,
            (Change::SameKind(s, n, b), _) => {
                let x = node(v, &path);
                match x {
                    Value::String(_) => *x = s.into(),
                    Value::Number(_) => *x = n.into(),
                    Value::Bool(_) => *x = b.into(),
                    _ => {}
                }
            }
            (Change::Remove, Some((Seg::Key(k), parent))) => {
                if let Value::Object(m) = node(v, parent) {
                    m.remove(k);
                }
            }
            (Change::Remove, Some((Seg::Index(i), parent))) => {
                if let Value::Array(a) = node(v, parent) {
                    a.remove(*i);
                }
            }
            (Change::Remove, None) => {}
        }
    }

    fn alloc_strategy() -> impl Strategy<Value = StoredAllocation> {
        (any::<[String; 6]>(), any::<u32>(), any::<u64>()).prop_map(|(s, ip, t)| {
            let [id, ifname, network, ns, name, netns] = s;
            StoredAllocation {
                key: AttachKey {
                    network,
                    container_id: id,
                    ifname,
                },
                pod: PodRef {
                    namespace: ns,
                    name,
                    uid: String::new(),
                },
                netns,
                address: PodAddress::v4(Ipv4Addr::from(ip), 32, None),
                datapath: Datapath::Veth,
                created_unix: t,
            }
        })
    }

    fn state_strategy() -> impl Strategy<Value = State> {
        (
            any::<u32>(),
            any::<String>(),
            prop::collection::vec(alloc_strategy(), 0..4),
            prop::option::of((any::<u32>(), 0u8..=32, prop::option::of(any::<u32>()))),
        )
            .prop_map(|(schema, boot_id, allocations, vpc)| State {
                schema: if schema % 2 == 0 { SCHEMA } else { 0 },
                boot_id,
                allocations,
                vpc: vpc.map(|(net, prefix, cursor)| VpcPoolState {
                    pod_cidr: ipnetwork::Ipv4Network::new(Ipv4Addr::from(net), prefix).unwrap(),
                    cursor: cursor.map(Ipv4Addr::from),
                    released: Vec::new(),
                    pod_cidr_v6: None,
                }),
                eni: None,
                exclusive_eni: None,
                journal_id: 0,
            })
    }

    /// One store per property test (its cases run on one thread), removed with the thread.
    struct TmpStore(std::cell::RefCell<Store>);

    impl TmpStore {
        fn new(name: &str) -> TmpStore {
            TmpStore(std::cell::RefCell::new(Store::new(
                tmpdir(&format!("prop-{name}")).join("state.json"),
            )))
        }
    }

    impl Drop for TmpStore {
        fn drop(&mut self) {
            if let Some(d) = self.0.borrow().path().parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }

    proptest! {
        #![proptest_config(crate::prop_support::proptest_config(1000))]

        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            thread_local!(static S: TmpStore = TmpStore::new("bytes"));
            S.with(|s| load_bytes(&mut s.0.borrow_mut(), &bytes));
        }

        #[test]
        fn arbitrary_json(v in any_json()) {
            thread_local!(static S: TmpStore = TmpStore::new("json"));
            S.with(|s| load_bytes(&mut s.0.borrow_mut(), v.to_string().as_bytes()));
        }

        #[test]
        fn mutated_sample(
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), change()), 1..4),
            damage in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            thread_local!(static S: TmpStore = TmpStore::new("mutated"));
            let mut v: Value = serde_json::from_str(SAMPLE).unwrap();
            for (at, change) in edits {
                edit(&mut v, at, change);
            }
            let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
            if let Some((at, b)) = damage {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            S.with(|s| load_bytes(&mut s.0.borrow_mut(), &bytes));
        }
    }

    // Every case saves (a snapshot or a log record): fewer of them.
    proptest! {
        #![proptest_config(crate::prop_support::proptest_config(300))]

        #[test]
        fn generated_states_round_trip(state in state_strategy()) {
            thread_local!(static S: TmpStore = TmpStore::new("generated"));
            S.with(|s| round_trips(&mut s.0.borrow_mut(), state));
        }
    }
}

#[path = "journal_tests.rs"]
mod journal_tests;

#[test]
fn boot_id_is_readable() {
    assert_eq!(read_boot_id().unwrap().len(), 36);
}

#[test]
fn a_reader_of_a_schema1_file_writes_nothing_the_owner_keeps_a_copy() {
    let d = tmpdir("schema1-reader");
    let path = d.join("state.json");
    std::fs::write(
        &path,
        include_str!("../../tests/fixtures/state-schema1-vpc.json"),
    )
    .unwrap();
    let store = Store::new(path.clone());
    let read = store.read_live().unwrap().expect("migrated");
    assert!(!read.allocations.is_empty());
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&d), ["state.json"], "terway state writes nothing");
    assert_eq!(store.load().unwrap(), Some(read));
    assert_eq!(names(&d), ["state.json", "state.json.schema1"]);
    std::fs::remove_dir_all(d).unwrap();
}
