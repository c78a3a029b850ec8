//! The poll loop end to end over real sockets, with the test as the daemon loop: eviction,
//! deadlines, stopping, parked requests that cost no thread, dropped responders, slow readers.

use super::*;
use crate::model::{AttachKey, PodRef};
use crate::rpc::{Reply, StatusView};
use std::io::Read;
use std::net::Shutdown;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;

/// A poll loop on a socket of its own; the test plays the daemon loop on `rx`. The loop thread
/// lives as long as the test process (as in the daemon).
pub(super) struct Served {
    pub path: PathBuf,
    pub rx: mpsc::Receiver<RpcCall>,
    pub gate: Arc<Gate>,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn serve(name: &str, deadline: Duration, cap: usize) -> Served {
    let dir = std::env::temp_dir().join(format!("terway-rpc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("s.sock");
    let listener = bind(&path).unwrap();
    let gate = Gate::with_deadline(deadline);
    let (tx, rx) = mpsc::channel::<RpcCall>();
    let g = gate.clone();
    std::thread::Builder::new()
        .name("rpc-test-loop".into())
        .spawn(move || poll_loop::run(listener, tx, g, cap))
        .unwrap();
    Served {
        path,
        rx,
        gate,
        dir,
    }
}

/// Connects and sends `body` as a whole request (the end of it is the end of writing). A caller
/// turned away may find writing shut down already; its reply says why.
pub(super) fn ask(path: &Path, body: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    let _ = s.write_all(body).and_then(|()| s.shutdown(Shutdown::Write));
    s
}

/// The reply on `s`, up to the daemon's end of it.
pub(super) fn answer(mut s: &UnixStream) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    serde_json::from_slice(&buf)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&buf)))
}

fn status() -> Vec<u8> {
    serde_json::to_vec(&Request::Status).unwrap()
}

fn status_reply() -> Response {
    Ok(Reply::Status(StatusView {
        mode: "VPC".into(),
        free: 7,
    }))
}

fn next(s: &Served) -> RpcCall {
    s.rx.recv_timeout(Duration::from_secs(10))
        .expect("the request reaches the daemon loop")
}

fn busy_msg(r: Response) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.kind, Kind::TryAgain, "{e}");
    assert!(e.msg.contains("busy"), "{e}");
    e.msg
}

/// Whether `s` has nothing to read yet (it was neither answered nor closed).
fn unanswered(s: &UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = (&*s).read(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn the_oldest_reader_is_evicted_and_when_all_work_the_newcomer_is_refused() {
    let s = serve("evict", Duration::from_secs(10), 2);
    let oldest = UnixStream::connect(&s.path).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let idle = UnixStream::connect(&s.path).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Both places are taken by readers: the one that waited longest makes room.
    let c = ask(&s.path, &status());
    next(&s).reply.send(status_reply()).unwrap();
    assert_eq!(answer(&c), status_reply());
    assert!(busy_msg(answer(&oldest)).contains("had not sent a complete request"));
    assert!(unanswered(&idle));
    // One place works on a request, the other is read: the reader makes room again.
    let work = ask(&s.path, &status());
    let parked = next(&s);
    let work2 = ask(&s.path, &status());
    let parked2 = next(&s);
    assert!(busy_msg(answer(&idle)).contains("had not sent a complete request"));
    // Every place busy with real work: the newcomer hears so and nothing reaches the loop.
    let refused = ask(&s.path, &status());
    assert!(busy_msg(answer(&refused)).contains("2 requests in progress"));
    assert!(s.rx.try_recv().is_err());
    assert_eq!(s.gate.unanswered(), 2);
    parked.reply.send(status_reply()).unwrap();
    parked2.reply.send(status_reply()).unwrap();
    assert_eq!(answer(&work), status_reply());
    assert_eq!(answer(&work2), status_reply());
}

#[test]
fn stopping_refuses_without_the_loop_and_keeps_the_first_reason() {
    let s = serve("stopping", Duration::from_secs(10), 8);
    assert!(s.gate.stopping().is_none());
    s.gate.stop("state file is read-only");
    s.gate.stop("later reasons do not replace the first");
    let e = s.gate.stopping().unwrap();
    assert_eq!(e.kind.cni_code(), 11);
    assert!(e.msg.contains("read-only"), "{e}");
    let e = answer(&ask(&s.path, &status())).unwrap_err();
    assert!(e.msg.contains("stopping (state file is read-only)"), "{e}");
    assert!(s.rx.try_recv().is_err());
    wait_until_answered(&s.gate);
}

fn wait_until_answered(gate: &Gate) {
    wait_for_unanswered(gate, 0);
}

/// The count drops once a reply is written, just after its client may have read it.
fn wait_for_unanswered(gate: &Gate, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while gate.unanswered() > n && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(gate.unanswered(), n);
}

#[test]
fn a_trickle_is_cut_off_at_the_deadline_not_at_its_end() {
    let s = serve("trickle", Duration::from_millis(100), 8);
    let c = UnixStream::connect(&s.path).unwrap();
    let mut w = c.try_clone().unwrap();
    // Three seconds of a byte every 30 ms, unless the daemon stops it.
    let trickler = std::thread::spawn(move || {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(30));
            w.write_all(b" ").is_err()
        })
    });
    let e = answer(&c).unwrap_err();
    assert_eq!(e.kind, Kind::TryAgain);
    assert!(e.msg.contains("no complete request within 100 ms"), "{e}");
    assert!(trickler.join().unwrap(), "the trickle went on to its end");
    assert!(s.rx.try_recv().is_err());
}

#[test]
fn an_oversized_request_gets_a_json_refusal_while_it_is_still_being_sent() {
    let s = serve("oversized", Duration::from_secs(10), 8);
    let c = UnixStream::connect(&s.path).unwrap();
    let mut w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let sent = w.write_all(&vec![b' '; 2 * MAX_REQUEST_BYTES]);
        let _ = w.shutdown(Shutdown::Write);
        sent
    });
    let e = answer(&c).unwrap_err();
    assert_eq!(e.kind, Kind::Decode);
    assert!(e.msg.contains(&MAX_REQUEST_BYTES.to_string()), "{e}");
    // The rest was drained, not refused with a reset.
    sender.join().unwrap().unwrap();
}

fn alloc(i: usize) -> Request {
    Request::Alloc {
        key: AttachKey::new("terway", &format!("pod-{i}"), "eth0"),
        pod: PodRef {
            namespace: "default".into(),
            name: format!("pod-{i}"),
            uid: String::new(),
        },
        netns: "/run/netns/x".into(),
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

const ALONE: &str = "TERWAY_SERVER_TEST_ALONE";

/// Runs `test` of this module alone, in a child process of this test binary: threads counted
/// there are the test's own, not those of tests running next to it.
fn run_alone(test: &str) {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::{test}"),
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
}

#[test]
fn parked_requests_hold_no_thread_and_each_reply_finds_its_client() {
    const PARKED: usize = 300;
    if std::env::var_os(ALONE).is_none() {
        return run_alone("parked_requests_hold_no_thread_and_each_reply_finds_its_client");
    }
    let s = serve("parked", Duration::from_secs(30), MAX_CONNECTIONS);
    let before = threads();
    let clients: Vec<UnixStream> = (0..PARKED)
        .map(|i| ask(&s.path, &serde_json::to_vec(&alloc(i)).unwrap()))
        .collect();
    let calls: Vec<RpcCall> = (0..PARKED).map(|_| next(&s)).collect();
    assert_eq!(s.gate.unanswered(), PARKED);
    assert_eq!(
        threads(),
        before,
        "{PARKED} parked requests must not cost threads"
    );
    // Answered in another order than they came: each reply names its pod.
    for call in calls.into_iter().rev() {
        let Request::Alloc { key, .. } = &call.req else {
            panic!("{:?}", call.req);
        };
        let e = Error::new(Kind::Internal, key.container_id.clone());
        call.reply.send(Err(e)).unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(answer(c).unwrap_err().msg, format!("pod-{i}"));
    }
    wait_until_answered(&s.gate);
    assert_eq!(threads(), before);
}

#[test]
fn a_responder_dropped_unsent_still_answers_the_client() {
    let s = serve("dropped", Duration::from_secs(10), 8);
    let c = ask(&s.path, &status());
    drop(next(&s));
    let e = answer(&c).unwrap_err();
    assert_eq!(e.kind, Kind::TryAgain);
    assert!(
        e.msg.contains("dropped the request without answering"),
        "{e}"
    );
    wait_until_answered(&s.gate);
    // Once stopping, the reason is what the client hears.
    let c = ask(&s.path, &status());
    let call = next(&s);
    s.gate.stop("signal 15");
    drop(call);
    let e = answer(&c).unwrap_err();
    assert!(e.msg.contains("stopping (signal 15)"), "{e}");
    wait_until_answered(&s.gate);
}

#[test]
fn with_the_daemon_loop_gone_a_request_is_answered_not_left_hanging() {
    let mut s = serve("loop-gone", Duration::from_secs(10), 8);
    s.rx = mpsc::channel().1;
    let e = answer(&ask(&s.path, &status())).unwrap_err();
    assert_eq!(e.kind, Kind::TryAgain);
    assert!(e.msg.contains("without answering"), "{e}");
    wait_until_answered(&s.gate);
}

#[test]
fn a_client_that_does_not_read_its_reply_delays_no_other() {
    let s = serve("slow-reader", Duration::from_secs(30), 8);
    let slow = ask(&s.path, &status());
    // Far more than a socket buffer holds: the loop keeps the rest until the client reads.
    let big = "x".repeat(8 << 20);
    next(&s)
        .reply
        .send(Err(Error::new(Kind::Internal, big.clone())))
        .unwrap();
    for i in 0..3 {
        let fast = ask(&s.path, &status());
        let msg = format!("fast {i}");
        next(&s)
            .reply
            .send(Err(Error::new(Kind::Internal, msg.clone())))
            .unwrap();
        assert_eq!(answer(&fast).unwrap_err().msg, msg);
    }
    // The big reply is still being written.
    wait_for_unanswered(&s.gate, 1);
    assert_eq!(answer(&slow).unwrap_err().msg, big);
    wait_until_answered(&s.gate);
}

#[test]
fn a_descriptor_limit_lowered_below_the_open_connections_does_not_stop_the_loop() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const IDLE: usize = 100;
    if std::env::var_os(ALONE).is_none() {
        return run_alone(
            "a_descriptor_limit_lowered_below_the_open_connections_does_not_stop_the_loop",
        );
    }
    let s = serve("fd-limit", Duration::from_secs(30), MAX_CONNECTIONS);
    let mut idle: Vec<UnixStream> = (0..IDLE)
        .map(|_| UnixStream::connect(&s.path).unwrap())
        .collect();
    // Connected before the limit drops: this test needs no new descriptor after it.
    let mut real = UnixStream::connect(&s.path).unwrap();
    // Both ends of every connection are open once the loop has taken them all in.
    let open = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let until = Instant::now() + Duration::from_secs(10);
    while open() < 2 * (IDLE + 1) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Far below what is open: one poll can no longer watch every connection. A hang-up wakes
    // the loop so that its next poll is under the new limit.
    setrlimit(Resource::RLIMIT_NOFILE, 64, hard).unwrap();
    drop(idle.pop());
    std::thread::sleep(Duration::from_millis(100));
    real.write_all(&status()).unwrap();
    real.shutdown(Shutdown::Write).unwrap();
    let served = s.rx.recv_timeout(Duration::from_secs(10)).map(|call| {
        call.reply.send(status_reply()).unwrap();
        answer(&real)
    });
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert_eq!(
        served.expect("the request reaches the daemon loop"),
        status_reply()
    );
    drop(idle);
}
