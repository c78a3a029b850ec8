//! Every CLI command whose stdout is a pipe nobody reads any more (`terway mapping | head -1`)
//! ends quietly: no panic, nothing about the pipe on stderr, and the exit status it has with a
//! reader (so `config check bad.json | head -1` still fails under `set -o pipefail`).

mod common;

use common::{BIN, Node, TempDir, require_root};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `terway args` with stdout an open pipe that is read to the end.
fn run_read(args: &[&str], socket: &str) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .env("TERWAY_SOCKET", socket)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `terway args` with stdout a pipe whose read end is closed before the command starts:
/// its first write fails with EPIPE, deterministically.
fn run_closed(args: &[&str], socket: &str) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(args)
        .env("TERWAY_SOCKET", socket)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The command prints something with a reader, and with none it ends with the same status and
/// says nothing about the pipe.
#[track_caller]
fn assert_quiet(args: &[&str], socket: &str, want: i32) {
    let read = run_read(args, socket);
    assert_eq!(
        read.code,
        Some(want),
        "{args:?} with a reader: {}",
        read.stderr
    );
    assert!(
        !read.stdout.is_empty(),
        "{args:?} must print something, or a closed stdout proves nothing"
    );
    let closed = run_closed(args, socket);
    assert_eq!(
        closed.code,
        Some(want),
        "{args:?} with a closed stdout: {}",
        closed.stderr
    );
    let err = closed.stderr.to_lowercase();
    assert!(
        !err.contains("panicked") && !err.contains("broken pipe"),
        "{args:?}: {}",
        closed.stderr
    );
    // Whatever else it says on stderr, it says with a reader too (e.g. why it fails).
    assert_eq!(closed.stderr, read.stderr, "{args:?}");
}

const NO_DAEMON: &str = "/nonexistent/terway.sock";

#[test]
fn one_shot_commands_end_quietly() {
    let d = TempDir::new("pipes");
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/eni.json");
    let bad = d.0.join("bad.json");
    std::fs::write(&bad, r#"{"daemon_mode":"VPC"}"#).unwrap();
    let bad = bad.to_str().unwrap();
    for (args, want) in [
        (&["version"][..], 0),
        (&["max-pods", "--eni-quantity", "8", "--eni-ips", "30"], 0),
        (
            &[
                "max-pods",
                "--eni-quantity",
                "2",
                "--eni-ips",
                "6",
                "--json",
            ],
            0,
        ),
        (&["config", "check", good], 0),
        (&["config", "check", "--json", good], 0),
        (&["config", "check", bad], 1),
        (&["config", "check", "--json", bad], 1),
        (&["emulate", "--print-config"], 0),
    ] {
        assert_quiet(args, NO_DAEMON, want);
    }
}

#[test]
fn failing_before_any_output_is_unchanged() {
    for args in [&["pool"][..], &["mapping", "--json"]] {
        let r = run_closed(args, NO_DAEMON);
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("not reachable"), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn daemon_commands_end_quietly() {
    require_root();
    let mut node = Node::new(34);
    node.start_daemon();
    let socket = node.socket();
    for args in [
        &["mapping"][..],
        &["mapping", "--json"],
        &["pool"],
        &["pool", "--json"],
    ] {
        assert_quiet(args, &socket, 0);
    }
    // The daemon is unharmed by its clients' closed pipes.
    assert_eq!(run_read(&["pool"], &socket).code, Some(0));
}

/// `terway emulate` serving OpenAPI and per-instance metadata on loopback; killed on drop.
struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metadata_ends_quietly() {
    let mut emu = Emulator(
        Command::new(BIN)
            .args(["emulate", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(emu.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap().to_string();
    std::thread::spawn(move || for _ in lines {});
    let region: serde_json::Value =
        serde_json::from_str(&run_read(&["emulate", "--print-config"], NO_DAEMON).stdout).unwrap();
    let instance = region["instances"][0]["id"].as_str().unwrap();
    let endpoint = format!("http://{addr}/instances/{instance}");
    // The emulated ENIs have no device on this host: the command's own status is 1.
    let want = run_read(&["metadata", "--endpoint", &endpoint], NO_DAEMON)
        .code
        .unwrap();
    assert_ne!(want, 101);
    for json in [false, true] {
        let mut args = vec!["metadata", "--endpoint", &endpoint];
        if json {
            args.push("--json");
        }
        assert_quiet(&args, NO_DAEMON, want);
    }
}
