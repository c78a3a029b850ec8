//! `terway emulate` under hostile HTTP clients: oversized and malformed requests get a 4xx JSON
//! answer, slow clients are cut off, idle ones do not starve others, memory stays bounded.

mod emulate_support;

use emulate_support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// One answer off the wire.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", self.head, self.body))
    }

    /// A refusal in the emulator's error style, with `status` and `code`.
    fn assert_refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {} {}", self.head, self.body);
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {}",
            self.head
        );
        let v = self.json();
        assert_eq!(v["Code"], code, "{what}: {v}");
        for f in ["RequestId", "Code", "Message"] {
            assert!(v[f].is_string(), "{what}: {f} missing in {v}");
        }
    }
}

/// Reads one answer until the server closes; None when nothing came before `timeout`.
fn read_answer(s: &mut TcpStream, timeout: Duration) -> Option<Answer> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the answer still leaves the answer.
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Sends `request` whole and reads the answer.
fn exchange(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    read_answer(&mut s, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(request)))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn huge_header_lines_are_refused_and_memory_stays_bounded() {
    let emu = Emu::start(&[]);
    // Warm up every path the abuse takes, so the baseline holds its allocations.
    for _ in 0..3 {
        emu.ok("DescribeInstanceTypes", &[]);
        let a = exchange(
            &emu.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: aaaaaaaaaaaaaaa\r\n\r\n",
        );
        assert_eq!(a.status, 400);
    }
    let before = rss_kib(emu.child.id());
    const LINE: usize = 16 << 20;
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = emu.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let mut w = s.try_clone().unwrap();
                // Stream the line from another thread: the answer comes long before its end.
                let writer = std::thread::spawn(move || {
                    let _ = w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
                    let chunk = vec![b'a'; 64 << 10];
                    let mut sent = 0;
                    while sent < LINE && w.write_all(&chunk).is_ok() {
                        sent += chunk.len();
                    }
                    sent
                });
                let a = read_answer(&mut s, Duration::from_secs(10));
                let _ = s.shutdown(Shutdown::Both);
                let _ = writer.join();
                a
            })
        })
        .collect();
    for c in clients {
        let a = c
            .join()
            .unwrap()
            .expect("an answer to a 16 MiB header line");
        a.assert_refused(431, "RequestHeaderFieldsTooLarge", "16 MiB header line");
    }
    let after = rss_kib(emu.child.id());
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB for 4 x 16 MiB header lines"
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    emu.ok("DescribeInstanceTypes", &[]);
}

#[test]
fn non_ascii_header_values_get_an_answer() {
    let emu = Emu::start(&[]);
    // UTF-8 is taken as it is.
    let a = exchange(
        &emu.addr,
        "GET /admin/health HTTP/1.1\r\nHost: x\r\nX-Note: café ✓\r\n\r\n".as_bytes(),
    );
    assert_eq!((a.status, a.body.as_str()), (200, "ok"), "{}", a.head);
    // Bytes that are no text at all are refused, with words.
    let a = exchange(
        &emu.addr,
        b"GET /admin/health HTTP/1.1\r\nHost: x\r\nX-Note: \xff\xfe\r\n\r\n",
    );
    a.assert_refused(400, "BadRequest", "non-UTF-8 header value");
    assert!(a.json()["Message"].as_str().unwrap().contains("x-note"));
    // The same on the API path, with a signed call still working afterwards.
    let a = exchange(
        &emu.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xe9t\xe9\r\nContent-Length: 0\r\n\r\n",
    );
    a.assert_refused(400, "BadRequest", "Latin-1 user agent");
    emu.ok("DescribeInstanceTypes", &[]);
}

#[test]
fn malformed_requests_get_a_4xx_json_answer() {
    let emu = Emu::start(&[]);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let long_target = format!("GET /?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(40_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"GARBAGE\r\n\r\n".to_vec(), 400, "BadRequest"),
        ("control bytes", b"\x00\x01\x02\r\n\r\n".to_vec(), 400, "BadRequest"),
        (
            "half a request, then EOF",
            b"GET / HTT".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "missing Host",
            b"GET /admin/health HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "two Hosts",
            b"GET /admin/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "Content-Length not a number",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "Content-Length overflowing",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
            413,
            "RequestEntityTooLarge",
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_vec(),
            400,
            "BadRequest",
        ),
        (
            "chunked body",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            411,
            "LengthRequired",
        ),
        (
            "declared body over the limit",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n".to_vec(),
            413,
            "RequestEntityTooLarge",
        ),
        (
            "body shorter than declared",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "too many headers",
            many_headers.into_bytes(),
            431,
            "RequestHeaderFieldsTooLarge",
        ),
        (
            "request target too long",
            long_target.into_bytes(),
            414,
            "RequestURITooLong",
        ),
        (
            "folded header line",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n".to_vec(),
            400,
            "BadRequest",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let mut s = TcpStream::connect(&emu.addr).unwrap();
        s.write_all(&bytes).unwrap();
        if what.contains("EOF") || what.contains("shorter") {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let a = read_answer(&mut s, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{what}: no answer"));
        a.assert_refused(status, code, what);
    }
    // An oversized body actually sent (not just declared) is refused without reading it all.
    let mut s = TcpStream::connect(&emu.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w
            .write_all(b"PUT /admin/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n");
        let _ = w.write_all(&vec![b'{'; 4 << 20]);
    });
    read_answer(&mut s, Duration::from_secs(5))
        .expect("an answer to a 4 MiB body")
        .assert_refused(413, "RequestEntityTooLarge", "4 MiB body");
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    // Still serving, and a 100-continue client gets its go-ahead.
    emu.ok("DescribeInstanceTypes", &[]);
    let mut s = TcpStream::connect(&emu.addr).unwrap();
    s.write_all(b"PUT /admin/faults HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{}").unwrap();
    let a = read_answer(&mut s, Duration::from_secs(5)).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}

#[test]
fn slow_clients_are_cut_off_by_the_request_deadline() {
    let emu = Emu::start(&["--request-timeout-ms", "1500"]);
    // One byte a second: in the head, and in the body.
    let slow = |prefix: &'static [u8], trickle: &'static [u8]| {
        let addr = emu.addr.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut s = TcpStream::connect(&addr).unwrap();
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(prefix);
                for b in trickle {
                    if w.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
            let a = read_answer(&mut s, Duration::from_secs(8));
            (a, start.elapsed())
        })
    };
    let head = slow(b"", b"GET /admin/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let body = slow(
        b"PUT /admin/timing HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
        b"{\"attach_delay_ms\": 1, \"detach_delay_ms\"",
    );
    for (what, t) in [("head", head), ("body", body)] {
        let (a, took) = t.join().unwrap();
        let a = a.unwrap_or_else(|| panic!("slow {what}: no answer within 8 s"));
        a.assert_refused(408, "RequestTimeout", what);
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "slow {what} cut off after {took:?}"
        );
    }
    // A client that says nothing at all is closed too, silently.
    let mut s = TcpStream::connect(&emu.addr).unwrap();
    let start = Instant::now();
    assert!(read_answer(&mut s, Duration::from_secs(5)).is_none());
    assert!(start.elapsed() < Duration::from_secs(3));
    emu.ok("DescribeInstanceTypes", &[]);
}

#[test]
fn idle_connections_do_not_stop_a_normal_request() {
    let emu = Emu::start(&[]);
    let idle: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(&emu.addr).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /admin/health HTTP/1.1\r\nHo").unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    emu.ok("DescribeInstanceTypes", &[]);
    assert_eq!(emu.raw("GET", "/admin/health", &[], b"").1, "ok");
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(idle);
}

#[test]
fn connections_beyond_the_cap_are_refused_until_idle_ones_are_cut() {
    let emu = Emu::start(&["--max-connections", "8", "--request-timeout-ms", "1000"]);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&emu.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(&emu.addr).unwrap();
    read_answer(&mut s, Duration::from_secs(2))
        .expect("a refusal over the cap")
        .assert_refused(503, "ServiceUnavailable", "over the connection cap");
    // The idle ones run out of time; then everyone is served again.
    std::thread::sleep(Duration::from_millis(1500));
    emu.ok("DescribeInstanceTypes", &[]);
    drop(idle);
}
