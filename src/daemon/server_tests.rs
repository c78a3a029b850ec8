use super::loop_tests::{answer, serve};
use super::*;
use crate::model::{AttachKey, PodRef};
use proptest::prelude::*;
use std::sync::mpsc;

fn config() -> ProptestConfig {
    crate::prop_support::proptest_config(2000)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_./-]{0,40}",
        any::<String>(),
        // Characters JSON must escape.
        proptest::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('\u{0}'),
                Just('\u{1f}'),
                any::<char>()
            ],
            0..8
        )
        .prop_map(|v| v.into_iter().collect()),
    ]
}

fn key() -> impl Strategy<Value = AttachKey> {
    (text(), text(), text()).prop_map(|(network, container_id, ifname)| AttachKey {
        network,
        container_id,
        ifname,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (key(), (text(), text(), text()), text()).prop_map(
            |(key, (namespace, name, uid), netns)| Request::Alloc {
                key,
                pod: PodRef {
                    namespace,
                    name,
                    uid
                },
                netns,
            }
        ),
        key().prop_map(|key| Request::Release { key }),
        key().prop_map(|key| Request::Get { key }),
        (text(), proptest::collection::vec(key(), 0..5))
            .prop_map(|(network, valid)| Request::Gc { network, valid }),
        Just(Request::Status),
        Just(Request::Mapping),
        Just(Request::Pool),
    ]
}

/// Byte-level damage to a valid request: flips, cuts, insertions, duplications.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let structural = prop_oneof![
        Just(b'{'),
        Just(b'}'),
        Just(b'['),
        Just(b']'),
        Just(b'"'),
        Just(b'\\'),
        Just(b':'),
        Just(b','),
        Just(b'0'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), structural).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                Just(br#","op":"pool""#.to_vec()),
                Just(br#""\ud800""#.to_vec()),
                Just(b"[[[[[[[[[[[[[[[[".to_vec()),
                Just(br#","extra":{"a":[1,2,{"b":null}]}"#.to_vec()),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<usize>(), 1..32usize).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Set(i, x) => {
            if !b.is_empty() {
                let i = at(*i, b.len());
                b[i] = *x;
            }
        }
        Mutation::Truncate(i) => b.truncate(at(*i, b.len() + 1)),
        Mutation::Insert(i, x) => {
            let i = at(*i, b.len() + 1);
            b.splice(i..i, x.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = at(*i, b.len() + 1);
            let end = (i + n).min(b.len());
            b.drain(i..end);
        }
        Mutation::Repeat(i, n) => {
            let i = at(*i, b.len() + 1);
            let end = (i + n).min(b.len());
            let piece = b[i..end].to_vec();
            b.splice(i..i, piece);
        }
    }
    b
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode_request(&bytes) {
            prop_assert_eq!(e.kind, Kind::Decode);
        }
    }

    #[test]
    fn every_request_round_trips(req in request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn mutated_requests_never_panic(
        req in request(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = serde_json::to_vec(&req).unwrap();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        match decode_request(&bytes) {
            // What still decodes must be a request that encodes back to valid JSON.
            Ok(r) => prop_assert!(decode_request(&serde_json::to_vec(&r).unwrap()).is_ok()),
            Err(e) => prop_assert_eq!(e.kind, Kind::Decode),
        }
    }
}

#[test]
fn oversized_requests_are_refused_by_size_before_parsing() {
    let mut b = br#"{"op":"status","pad":""#.to_vec();
    b.resize(MAX_REQUEST_BYTES + 1 - 2, b'a');
    b.extend_from_slice(br#""}"#);
    let e = decode_request(&b).unwrap_err();
    assert_eq!(e.kind, Kind::Decode);
    assert!(e.msg.contains(&MAX_REQUEST_BYTES.to_string()), "{e}");
    // One byte less is just a request with an unknown field.
    b.remove(30);
    assert_eq!(decode_request(&b).unwrap(), Request::Status);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut b = br#"{"op":"status","x":"#.to_vec();
    b.extend(std::iter::repeat_n(b'[', 100_000));
    let e = decode_request(&b).unwrap_err();
    assert_eq!(e.kind, Kind::Decode);
}

#[test]
fn lone_surrogates_and_unknown_ops_are_decode_errors() {
    for bad in [
        &br#"{"op":"get","key":{"container_id":"\ud800","ifname":"eth0"}}"#[..],
        br#"{"op":"format_disk"}"#,
        br#"{"op":"status"} trailing"#,
        br#"{"op":"release","key":{"container_id":"a","ifname":"b"},"op":"pool"}"#,
        b"",
    ] {
        assert_eq!(decode_request(bad).unwrap_err().kind, Kind::Decode);
    }
}

/// Chunk sizes (cycled) in which a request is written to the socket.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1..64usize, 1..12)
}

/// Writes `bytes` to `path` in pieces of `sizes`, pausing between them so the loop sees them
/// apart.
fn send_chunked(path: &Path, bytes: &[u8], sizes: &[usize]) -> Response {
    let mut s = UnixStream::connect(path).unwrap();
    let mut rest = bytes;
    for n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*n).min(rest.len()));
        s.write_all(piece).unwrap();
        rest = tail;
        std::thread::sleep(Duration::from_micros(200));
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    answer(&s)
}

/// However a request is cut into reads, the loop sees what one read of it would: the same
/// request reaches the daemon loop, or the same decode error reaches the client.
#[test]
fn requests_in_any_chunking_decode_as_a_whole() {
    let mut served = serve("chunks", Duration::from_secs(30), 64);
    let rx = std::mem::replace(&mut served.rx, mpsc::channel().1);
    // The daemon loop's part: echo the request it received as the error message.
    std::thread::spawn(move || {
        for call in rx {
            let echo = serde_json::to_string(&call.req).unwrap();
            let _ = call.reply.send(Err(Error::new(Kind::Internal, echo)));
        }
    });
    let cases = (
        request(),
        proptest::collection::vec(mutation(), 0..3),
        chunking(),
    );
    let mut runner =
        proptest::test_runner::TestRunner::new(crate::prop_support::proptest_config(64));
    let result = runner.run(&cases, |(req, mutations, sizes)| {
        let mut bytes = serde_json::to_vec(&req).unwrap();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        let got = send_chunked(&served.path, &bytes, &sizes).unwrap_err();
        match decode_request(&bytes) {
            Ok(r) => {
                prop_assert_eq!(got.kind, Kind::Internal);
                prop_assert_eq!(got.msg, serde_json::to_string(&r).unwrap());
            }
            Err(e) => prop_assert_eq!(got, e),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
