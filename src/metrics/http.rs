//! The metrics endpoint's HTTP, both ends, blocking and small: [`answer`] serves one connection
//! (`GET /metrics` only; the request head is bounded in size and time, every answer closes the
//! connection) and [`scrape_unix`] is the client `terway metrics` uses.

use crate::{Error, Kind, Result, ResultExt};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A request head larger than this is refused (431): a scrape sends a few hundred bytes.
pub const MAX_HEAD: usize = 8 << 10;
/// The whole request head must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A scrape answer larger than this is refused by the client.
const MAX_ANSWER: u64 = 64 << 20;
/// After answering, what the peer still sends (a body, pipelined requests) is read and dropped,
/// this much at most, within [`DRAIN_TIME`]: closing with unread data would reset the
/// connection and could destroy the answer before the peer reads it.
const DRAIN_CAP: usize = 64 << 10;
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// What a connection asked for, once its head is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    Metrics,
    /// Anything else: the status line and a one-line reason.
    Refused(u16, &'static str),
}

/// Decides on a complete request head (pure, so it is tested on arbitrary bytes).
pub fn route(head: &[u8]) -> Asked {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Asked::Refused(400, "incomplete request"),
        Err(httparse::Error::TooManyHeaders) => {
            return Asked::Refused(431, "too many headers");
        }
        Err(_) => return Asked::Refused(400, "malformed request"),
    }
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match (req.method.unwrap_or(""), path) {
        ("GET", "/metrics") => Asked::Metrics,
        (_, "/metrics") => Asked::Refused(405, "only GET /metrics"),
        _ => Asked::Refused(404, "only GET /metrics"),
    }
}

/// Reads the request head: up to the blank line, at most [`MAX_HEAD`] bytes, within `timeout`.
fn read_head(
    stream: &mut impl ReadTimeout,
    timeout: Duration,
) -> std::result::Result<Vec<u8>, Asked> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Asked::Refused(431, "request head too large"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Asked::Refused(408, "request not complete in time"));
        }
        stream.set_timeout(left);
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Asked::Refused(400, "incomplete request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Err(Asked::Refused(400, "connection failed")),
        }
    }
}

/// A stream whose reads and writes can be bounded in time.
pub trait ReadTimeout: Read + Write {
    fn set_timeout(&mut self, t: Duration);
    /// Tells the peer the answer is complete.
    fn shutdown_write(&mut self);
}

impl ReadTimeout for UnixStream {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
    }
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl ReadTimeout for std::net::TcpStream {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
    }
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Reads and drops what the peer still sends, bounded in bytes and time.
fn drain(stream: &mut impl ReadTimeout) {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while total < DRAIN_CAP {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        stream.set_timeout(left);
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn write_answer(stream: &mut impl ReadTimeout, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n",
        reason_phrase(status),
        body.len(),
        if status == 405 { "Allow: GET\r\n" } else { "" },
    );
    stream.set_timeout(REQUEST_TIMEOUT);
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    stream.shutdown_write();
    drain(stream);
}

/// Serves one connection: reads the request, answers `GET /metrics` with `text()` (called only
/// then), anything else with an error status. `allowed` is checked after the request is read so
/// the refusal reaches the peer.
pub fn answer(
    stream: &mut impl ReadTimeout,
    allowed: std::result::Result<(), &'static str>,
    text: impl FnOnce() -> String,
) {
    let asked = match read_head(stream, REQUEST_TIMEOUT) {
        Ok(head) => route(&head),
        Err(refused) => refused,
    };
    match (asked, allowed) {
        (Asked::Metrics, Ok(())) => {
            write_answer(stream, 200, super::CONTENT_TYPE, text().as_bytes());
        }
        (Asked::Metrics, Err(why)) => {
            write_answer(stream, 403, "text/plain", format!("{why}\n").as_bytes())
        }
        (Asked::Refused(status, why), _) => {
            write_answer(stream, status, "text/plain", format!("{why}\n").as_bytes())
        }
    }
}

/// `GET /metrics` over the unix socket at `path`: the text, or an error naming the socket.
pub fn scrape_unix(path: &Path, timeout: Duration) -> Result<String> {
    let where_ = || format!("metrics socket {}", path.display());
    let mut s = UnixStream::connect(path).with_ctx(|| {
        format!(
            "connect to the {} (is the daemon running? `metrics_socket` in its config, or \
             --metrics-socket)",
            where_()
        )
    })?;
    s.set_timeout(timeout);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .with_ctx(|| format!("send to the {}", where_()))?;
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .with_ctx(|| format!("read from the {}", where_()))?;
    let (status, body) =
        parse_answer(&raw).map_err(|m| Error::new(Kind::Decode, format!("{}: {m}", where_())))?;
    if status != 200 {
        return Err(Error::new(
            if status == 403 {
                Kind::Permission
            } else {
                Kind::Internal
            },
            format!("{}: HTTP {status}: {}", where_(), body.trim()),
        ));
    }
    Ok(body)
}

/// Status and body of an HTTP answer that ends with the connection.
pub fn parse_answer(raw: &[u8]) -> std::result::Result<(u16, String), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer ended inside its head".into()),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut body = &raw[head_len..];
    if let Some(h) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or("bad Content-Length")?;
        if body.len() < n {
            return Err(format!("answer cut short: {} of {n} bytes", body.len()));
        }
        body = &body[..n];
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8")?;
    Ok((status, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::Refused(405, "only GET /metrics")
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Asked::Refused(404, "only GET /metrics")
        );
        assert!(matches!(
            route(b"\x00\x01 junk\r\n\r\n"),
            Asked::Refused(400, _)
        ));
        let many: String = (0..100).map(|i| format!("h{i}: v\r\n")).collect();
        let req = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            route(req.as_bytes()),
            Asked::Refused(431, "too many headers")
        );
    }

    fn serve_once(
        allowed: std::result::Result<(), &'static str>,
        request: Vec<u8>,
    ) -> (u16, String) {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || answer(&mut server, allowed, || "a_metric 1\n".into()));
        client.write_all(&request).unwrap();
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).unwrap();
        t.join().unwrap();
        parse_answer(&raw).unwrap()
    }

    #[test]
    fn answers_metrics_and_refuses_the_rest() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(
            serve_once(Ok(()), get.clone()),
            (200, "a_metric 1\n".into())
        );
        assert_eq!(serve_once(Err("root only"), get).0, 403);
        assert_eq!(
            serve_once(Ok(()), b"GET /x HTTP/1.1\r\n\r\n".to_vec()).0,
            404
        );
        // A head that never ends is cut off at the size limit.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        let (server, mut client) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = server;
            answer(&mut s, Ok(()), || unreachable!("not asked"));
        });
        let _ = client.write_all(&huge);
        let mut raw = Vec::new();
        let _ = client.read_to_end(&mut raw);
        t.join().unwrap();
        assert_eq!(parse_answer(&raw).unwrap().0, 431);
    }

    #[test]
    fn answers_are_parsed_with_their_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_answer(raw).unwrap(), (200, "abc".into()));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"garbage").is_err());
    }

    proptest! {
        #![proptest_config(crate::prop_support::proptest_config(2000))]
        #[test]
        fn routing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = route(&bytes);
            let _ = parse_answer(&bytes);
        }
    }
}
