//! The daemon speaks systemd's notify protocol (`Type=notify`): READY with a STATUS line once it
//! serves, STATUS as its pods change, STOPPING on TERM — on `$NOTIFY_SOCKET` as systemd sets it.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_status_and_stopping_reach_notify_socket() {
    require_root();
    let node = Node::new(71);
    let path = node.dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns.name, BIN, "daemon", "--config"])
        .arg(node.config_path())
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv(&sock);
    assert!(
        ready.starts_with("READY=1\nSTATUS=VPC mode: 0 pod(s)"),
        "{ready}"
    );
    // Ready means serving: a CNI ADD works right away.
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    node.cni("ADD", "notify-1", &pod.path(), &conf).assert_ok();
    let status = recv(&sock);
    assert!(status.starts_with("STATUS=VPC mode: 1 pod(s)"), "{status}");
    node.cni("DEL", "notify-1", &pod.path(), &conf).assert_ok();
    assert!(recv(&sock).starts_with("STATUS=VPC mode: 0 pod(s)"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(recv(&sock), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}
