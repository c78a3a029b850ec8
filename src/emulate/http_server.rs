//! The emulator's HTTP/1.1 server: blocking, one thread per connection, one request per
//! connection (`Connection: close`), request heads parsed by `httparse`.
//!
//! Everything a client can make it hold is bounded: head bytes, line length, header count, body
//! bytes (Content-Length only), time (one deadline for the whole request, so a client trickling a
//! byte a second is cut off too) and connections at once. Every request refused on the wire gets
//! an answer (400, 408, 411, 413, 414, 431, 503) from [`Service::refuse`]; only a client that
//! sent nothing, or is gone, is closed without one.
//!
//! Why threads per connection and not a fixed pool: a pool of N lets N idle or slow clients stall
//! everyone until their deadline, and an injected latency (faults) would serialize the API. A
//! connection thread costs little (its stack is mostly untouched), and the connection cap bounds
//! them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bounds on one request; nothing a client sends is held beyond them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The request line, header lines and the empty line, in bytes.
    pub max_head: usize,
    /// One line of the head, the request line included, in bytes.
    pub max_line: usize,
    /// Header fields.
    pub max_headers: usize,
    /// Body bytes.
    pub max_body: usize,
}

impl Limits {
    /// Room for any request our clients send (a V2 GET with every parameter in the query).
    pub fn with_body(max_body: usize) -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_line: 16 * 1024,
            max_headers: 64,
            max_body,
        }
    }
}

/// A request as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Names in lower case, values (UTF-8) without surrounding blanks, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request whose head is read and checked; its body is still to come.
#[derive(Debug)]
pub struct Head {
    request: Request,
    content_length: usize,
    expect_continue: bool,
    /// Bytes read past the head: the start of the body.
    rest: Vec<u8>,
}

/// Why no request came out of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Nothing was sent before the end or the deadline: nothing to answer.
    Silent,
    /// The connection failed: nobody to answer.
    Io(io::ErrorKind),
    /// The deadline passed mid-request.
    Timeout,
    /// Not an HTTP/1.x request as we take them; says what is wrong.
    Bad(String),
    /// A Transfer-Encoding body (we take Content-Length only).
    LengthRequired,
    /// The request line is longer than the line limit.
    UriTooLong(usize),
    /// Too many header bytes, too long a header line or too many fields.
    HeadTooLarge(String),
    /// A Content-Length over the body limit.
    BodyTooLarge(usize),
}

/// An answer the server gives on its own: status, error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl WireError {
    /// The answer to send, if anyone is listening.
    pub fn refusal(&self) -> Option<Refusal> {
        let (status, code, message) = match self {
            WireError::Silent | WireError::Io(_) => return None,
            WireError::Timeout => (
                408,
                "RequestTimeout",
                "The request was not received in time.".to_string(),
            ),
            WireError::Bad(what) => (400, "BadRequest", format!("Malformed request: {what}.")),
            WireError::LengthRequired => (
                411,
                "LengthRequired",
                "Transfer-Encoding is not supported; send the body with a Content-Length."
                    .to_string(),
            ),
            WireError::UriTooLong(limit) => (
                414,
                "RequestURITooLong",
                format!("The request line is longer than {limit} bytes."),
            ),
            WireError::HeadTooLarge(what) => (
                431,
                "RequestHeaderFieldsTooLarge",
                format!("The request head is too large: {what}."),
            ),
            WireError::BodyTooLarge(limit) => (
                413,
                "RequestEntityTooLarge",
                format!("The request body is larger than {limit} bytes."),
            ),
        };
        Some(Refusal {
            status,
            code,
            message,
        })
    }
}

fn bad(what: impl Into<String>) -> WireError {
    WireError::Bad(what.into())
}

/// At most this much of a client's bytes is quoted back in a message.
fn quote(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// One read, retried on EINTR; a timeout is the deadline.
fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, WireError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(WireError::Timeout);
            }
            Err(e) => return Err(WireError::Io(e.kind())),
        }
    }
}

/// Finds the end of a head byte by byte, checking line bounds as the bytes arrive (so an
/// endless line is refused at the limit, not when it ends).
#[derive(Default)]
struct HeadScan {
    /// Bytes of the current line so far, `\r` included.
    line_len: usize,
    prev: u8,
    /// A byte other than CR/LF was seen: empty lines before the request line are skipped
    /// (RFC 9112 §2.2), empty lines after it end the head.
    started: bool,
    /// Complete lines, the request line included.
    lines: usize,
}

impl HeadScan {
    /// Continues the scan over `bytes`; `Some(n)` when the head ends after `n` of them.
    fn feed(&mut self, bytes: &[u8], lim: &Limits) -> Result<Option<usize>, WireError> {
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                let empty = self.line_len == 0 || (self.line_len == 1 && self.prev == b'\r');
                if self.started && empty {
                    return Ok(Some(i + 1));
                }
                if self.started {
                    self.lines += 1;
                    if self.lines > lim.max_headers + 1 {
                        return Err(WireError::HeadTooLarge(format!(
                            "more than {} header fields",
                            lim.max_headers
                        )));
                    }
                }
                self.line_len = 0;
            } else {
                self.line_len += 1;
                self.started |= b != b'\r';
                if self.line_len > lim.max_line {
                    return Err(if self.lines == 0 {
                        WireError::UriTooLong(lim.max_line)
                    } else {
                        WireError::HeadTooLarge(format!(
                            "a header line is longer than {} bytes",
                            lim.max_line
                        ))
                    });
                }
            }
            self.prev = b;
        }
        Ok(None)
    }
}

/// Reads and checks a request head from `r`. Holds at most `max_head` bytes plus one read
/// buffer, whatever `r` delivers, and gives the same answer however `r` splits its bytes.
pub fn read_head<R: Read>(r: &mut R, lim: &Limits) -> Result<Head, WireError> {
    let mut buf = Vec::new();
    let mut scan = HeadScan::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match read_some(r, &mut chunk) {
            Err(WireError::Timeout) if buf.is_empty() => return Err(WireError::Silent),
            other => other?,
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                WireError::Silent
            } else {
                bad("the connection ended inside the request head")
            });
        }
        // Only the bytes within the head limit are looked at.
        let room = lim.max_head - buf.len();
        let seen = &chunk[..n.min(room)];
        if let Some(end) = scan.feed(seen, lim)? {
            buf.extend_from_slice(&seen[..end]);
            return parse_head(&buf, chunk[end..n].to_vec(), lim);
        }
        if n > room {
            return Err(WireError::HeadTooLarge(format!(
                "more than {} bytes",
                lim.max_head
            )));
        }
        buf.extend_from_slice(seen);
    }
}

/// Checks a complete head (it ends with an empty line) and what its fields say about the body.
fn parse_head(buf: &[u8], rest: Vec<u8>, lim: &Limits) -> Result<Head, WireError> {
    let mut slots = vec![httparse::EMPTY_HEADER; lim.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(_) => return Err(bad("the request head does not end where its empty line is")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::HeadTooLarge(format!(
                "more than {} header fields",
                lim.max_headers
            )));
        }
        Err(e) => return Err(bad(format!("{e} in the request head"))),
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(bad("incomplete request line"));
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let Ok(value) = std::str::from_utf8(h.value.trim_ascii()) else {
            return Err(bad(format!("the value of header {name} is not UTF-8")));
        };
        headers.push((name, value.to_string()));
    }
    let values = |n: &'static str| headers.iter().filter(move |(k, _)| k == n).map(|(_, v)| v);
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    match values("host").count() {
        0 if minor_version == 1 => return Err(bad("missing Host header")),
        0 | 1 => {}
        _ => return Err(bad("more than one Host header")),
    }
    if values("transfer-encoding").next().is_some() {
        return Err(WireError::LengthRequired);
    }
    // Several Content-Length fields must agree (RFC 9112 §6.3); digits only, no sign, no list.
    let mut length: Option<Option<u64>> = None;
    for v in values("content-length") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!(
                "Content-Length {} is not a number",
                quote(v.as_bytes())
            )));
        }
        let n = v.bytes().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        if length.is_some_and(|l| l != n) {
            return Err(bad("Content-Length fields disagree"));
        }
        length = Some(n);
    }
    // No length and no Transfer-Encoding: the body is empty (RFC 9112 §6.3, point 7).
    let content_length = match length.unwrap_or(Some(0)) {
        Some(n) if n <= lim.max_body as u64 => n as usize,
        _ => return Err(WireError::BodyTooLarge(lim.max_body)),
    };
    let expect_continue = values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"));
    Ok(Head {
        request: Request {
            method: method.to_string(),
            target: target.to_string(),
            minor_version,
            headers,
            body: Vec::new(),
        },
        content_length,
        expect_continue,
        rest,
    })
}

/// Reads the body announced by `head` (at most `max_body` bytes, checked by [`read_head`]).
pub fn read_body<R: Read>(r: &mut R, head: Head) -> Result<Request, WireError> {
    let Head {
        mut request,
        content_length: len,
        mut rest,
        ..
    } = head;
    // One request per connection: bytes past this body are nobody's.
    rest.truncate(len);
    let mut body = rest;
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let n = read_some(r, &mut chunk[..want])?;
        if n == 0 {
            return Err(bad(format!(
                "the body ended after {} of {len} bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    request.body = body;
    Ok(request)
}

/// A whole request from `r`: [`read_head`], then [`read_body`].
pub fn read_request<R: Read>(r: &mut R, lim: &Limits) -> Result<Request, WireError> {
    let head = read_head(r, lim)?;
    read_body(r, head)
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
}

impl Reply {
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply {
            status,
            body: serde_json::to_string(v).unwrap_or_default(),
            content_type: "application/json;charset=utf-8",
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            content_type: "text/plain;charset=utf-8",
        }
    }
}

/// What the server asks of the application.
pub trait Service: Send + Sync + 'static {
    /// Answers a well-formed request from `peer`.
    fn handle(&self, req: &Request, peer: SocketAddr) -> Reply;
    /// Answers a request the server refuses itself.
    fn refuse(&self, refusal: &Refusal) -> Reply;
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Threads accepting connections (each connection then has its own thread).
    pub threads: usize,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Reading a request, and then writing its answer, must each end within this.
    pub request_timeout: Duration,
    pub limits: Limits,
}

/// How long a refused client may go on sending after its answer (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// A listener being served.
pub struct Server {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn start(listener: TcpListener, service: Arc<dyn Service>, opts: Options) -> Server {
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let acceptors = (0..opts.threads.max(1))
            .map(|_| {
                let (l, s, a, stop) = (
                    listener.clone(),
                    service.clone(),
                    active.clone(),
                    stopping.clone(),
                );
                std::thread::spawn(move || accept_loop(&l, &s, &opts, &a, &stop))
            })
            .collect();
        Server {
            listener,
            stopping,
            acceptors,
        }
    }

    /// Stops accepting; connections in flight finish on their own threads.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes every accept() blocked on it (Linux).
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        for a in self.acceptors {
            let _ = a.join();
        }
    }
}

/// Gives a connection slot back when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    service: &Arc<dyn Service>,
    opts: &Options,
    active: &Arc<AtomicUsize>,
    stopping: &AtomicBool,
) {
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait for connections to end rather than spin.
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= opts.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse_busy(&stream, service.as_ref(), opts.max_connections);
            continue;
        }
        let slot = Slot(active.clone());
        let service = service.clone();
        let opts = *opts;
        let spawned = std::thread::Builder::new()
            .name("emulate-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(&stream, peer, service.as_ref(), &opts);
            });
        // On failure the closure is dropped, and with it the stream and the slot.
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Answered from the acceptor itself, without reading: a short write timeout keeps a client
/// that never reads from holding it.
fn refuse_busy(stream: &TcpStream, service: &dyn Service, max: usize) {
    let reply = service.refuse(&Refusal {
        status: 503,
        code: "ServiceUnavailable",
        message: format!("More than {max} connections at once; try again later."),
    });
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = write_reply(&mut &*stream, &reply, false);
    let _ = stream.shutdown(Shutdown::Write);
}

/// A socket whose reads and writes all end by one deadline: a client trickling a byte at a
/// time runs out of time as surely as one sending nothing.
struct Deadline<'a> {
    stream: &'a TcpStream,
    timeout: Duration,
    until: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    /// A fresh deadline, for writing the answer.
    fn restart(&mut self) {
        self.until = Instant::now() + self.timeout;
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serve_connection(stream: &TcpStream, peer: SocketAddr, service: &dyn Service, opts: &Options) {
    let mut conn = Deadline {
        stream,
        timeout: opts.request_timeout,
        until: Instant::now() + opts.request_timeout,
    };
    let read = read_head(&mut conn, &opts.limits).and_then(|head| {
        if head.expect_continue && head.content_length > 0 {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| WireError::Io(e.kind()))?;
        }
        read_body(&mut conn, head)
    });
    match read {
        Ok(req) => {
            let reply = catch_unwind(AssertUnwindSafe(|| service.handle(&req, peer)))
                .unwrap_or_else(|_| {
                    service.refuse(&Refusal {
                        status: 500,
                        code: "InternalError",
                        message: "The request processing has failed.".into(),
                    })
                });
            conn.restart();
            let _ = write_reply(&mut conn, &reply, req.method == "HEAD");
            let _ = stream.shutdown(Shutdown::Write);
        }
        Err(e) => {
            if let Some(r) = e.refusal() {
                conn.restart();
                if write_reply(&mut conn, &service.refuse(&r), false).is_ok() {
                    linger(stream);
                }
            }
        }
    }
}

/// After answering a request not read to its end: stop writing, then drain what the client
/// still sends for a moment. Closing with unread bytes would reset the connection, and a reset
/// can destroy the answer before the client reads it.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn write_reply<W: Write>(w: &mut W, reply: &Reply, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    // One write: head and body leave in the same segments.
    w.write_all(&out)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hands out its bytes in pieces of the given sizes (cycled), as a socket may.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        i: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let want = self.sizes.get(self.i % self.sizes.len().max(1)).copied();
            let k = want.unwrap_or(1).max(1).min(buf.len()).min(self.data.len());
            buf[..k].copy_from_slice(&self.data[..k]);
            self.data = &self.data[k..];
            self.i += 1;
            Ok(k)
        }
    }

    /// Counts what is read through it.
    struct Counting<R>(R, usize);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    fn small() -> Limits {
        Limits {
            max_head: 256,
            max_line: 64,
            max_headers: 4,
            max_body: 32,
        }
    }

    fn read(bytes: &[u8]) -> Result<Request, WireError> {
        read_request(&mut &bytes[..], &Limits::with_body(1024))
    }

    fn status(r: Result<Request, WireError>) -> u16 {
        r.expect_err("a refusal")
            .refusal()
            .expect("an answer")
            .status
    }

    /// The properties of the reader on any input: the same outcome however the bytes arrive;
    /// a request within every bound, or an error answered with a 4xx (or nothing to answer).
    fn check(input: &[u8], lim: &Limits, sizes: &[usize]) -> Result<Request, WireError> {
        let whole = read_request(&mut &input[..], lim);
        let split = read_request(
            &mut Pieces {
                data: input,
                sizes,
                i: 0,
            },
            lim,
        );
        assert_eq!(whole, split, "the outcome depends on how the bytes arrive");
        match &whole {
            Ok(r) => {
                assert!(r.body.len() <= lim.max_body);
                assert!(r.headers.len() <= lim.max_headers);
                assert!(r.target.len() <= lim.max_line);
                let head: usize = r.method.len()
                    + r.target.len()
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>();
                assert!(head <= lim.max_head);
                for (k, v) in &r.headers {
                    assert!(k.len() + v.len() < lim.max_line, "{k}: {v}");
                    assert_eq!(*k, k.to_ascii_lowercase());
                }
                if r.minor_version == 1 {
                    assert_eq!(r.headers.iter().filter(|(k, _)| k == "host").count(), 1);
                }
                let declared = r
                    .header("content-length")
                    .map_or(Ok(0), str::parse::<usize>);
                assert_eq!(declared, Ok(r.body.len()));
                assert!(r.header("transfer-encoding").is_none());
            }
            Err(e) => match e.refusal() {
                Some(r) => assert!((400..500).contains(&r.status), "{e:?}"),
                None => assert!(input.is_empty(), "{e:?} without an answer"),
            },
        }
        whole
    }

    /// A valid request from its parts.
    fn wire(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("{method} {target} HTTP/1.1\r\nHost: emu\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn parts() -> impl Strategy<Value = (String, String, Vec<(String, String)>, Vec<u8>)> {
        let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]);
        let target = "/[a-zA-Z0-9/._~%=&?-]{0,40}";
        let name = prop::sample::select(vec![
            "Content-Type",
            "x-acs-action",
            "X-Acs-Date",
            "Authorization",
            "X-aliyun-ecs-metadata-token",
            "User-Agent",
            "Expect",
        ]);
        let value = "[ -~\u{e9}\u{2713}]{0,30}";
        let headers = prop::collection::vec((name.prop_map(String::from), value), 0..4);
        let body = prop::collection::vec(any::<u8>(), 0..48);
        (method.prop_map(String::from), target, headers, body)
    }

    /// Edits: (where, what, byte); `what` replaces, inserts, deletes or cuts there.
    fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
        for &(at, what, b) in edits {
            let at = at % (bytes.len() + 1);
            match what % 4 {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at, b),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {}
            }
        }
        bytes
    }

    /// 2000 cases each; `PROPTEST_CASES=1000000` for a long fuzz.
    fn config() -> ProptestConfig {
        crate::prop_support::proptest_config(2000)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_bytes_are_read_or_refused_with_a_4xx(
            input in prop::collection::vec(any::<u8>(), 0..600),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            check(&input, &small(), &sizes).ok();
            check(&input, &Limits::with_body(1024), &sizes).ok();
        }

        #[test]
        fn http_like_bytes_are_read_or_refused_with_a_4xx(
            input in prop::collection::vec(
                prop::sample::select(b"GET POST /?a=1 HTTP/1.0 HTTP/1.1\r\n\r\nHost: \
                    Content-Length: 0123456789 Transfer-Encoding: \t\xc3\xa9\xff".to_vec()),
                0..600,
            ),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            check(&input, &small(), &sizes).ok();
            check(&input, &Limits::with_body(1024), &sizes).ok();
        }

        #[test]
        fn mutated_requests_are_read_or_refused_with_a_4xx(
            (method, target, headers, body) in parts(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..4),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let input = mutate(wire(&method, &target, &headers, &body), &edits);
            check(&input, &small(), &sizes).ok();
            check(&input, &Limits::with_body(1024), &sizes).ok();
        }

        #[test]
        fn valid_requests_read_back_as_sent(
            (method, target, headers, body) in parts(),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let input = wire(&method, &target, &headers, &body);
            let r = check(&input, &Limits::with_body(1024), &sizes).expect("a valid request");
            prop_assert_eq!(&r.method, &method);
            prop_assert_eq!(&r.target, &target);
            prop_assert_eq!(&r.body, &body);
            let sent: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim_matches([' ', '\t']).to_string()))
                .collect();
            prop_assert_eq!(&r.headers[1..r.headers.len() - 1], &sent[..]);
        }
    }

    #[test]
    fn a_signed_api_call_reads_whole() {
        let input = b"POST /?Action=X HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-Acs-Action: X\r\n\
            content-type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\na=1&b";
        let r = read(input).unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/?Action=X")
        );
        assert_eq!(r.header("x-acs-action"), Some("X"));
        assert_eq!(r.header("host"), Some("127.0.0.1:1"));
        assert_eq!(r.body, b"a=1&b");
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        let r = read(b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.target, "/");
    }

    #[test]
    fn endless_input_ends_at_the_bounds_having_read_little() {
        let lim = Limits::with_body(1024);
        let mut line = Counting(
            io::Cursor::new(&b"GET / HTTP/1.1\r\nX: "[..]).chain(io::repeat(b'a')),
            0,
        );
        assert!(matches!(
            read_request(&mut line, &lim),
            Err(WireError::HeadTooLarge(_))
        ));
        assert!(line.1 <= lim.max_line + 4096 + 32, "read {} bytes", line.1);
        for (what, filler, want) in [
            ("request line", &b"a"[..], 414),
            ("empty lines", b"\r\n", 431),
            ("bare newlines", b"\n", 431),
            ("headers", b"X: v\r\n", 431),
        ] {
            let prefix: &[u8] = if what == "headers" {
                b"GET / HTTP/1.1\r\n"
            } else {
                b""
            };
            let mut r = Counting(io::Cursor::new(prefix).chain(Repeat(filler, 0)), 0);
            assert_eq!(status(read_request(&mut r, &lim)), want, "{what}");
            assert!(r.1 <= lim.max_head + 4096, "{what}: read {} bytes", r.1);
        }
    }

    /// `filler` forever.
    struct Repeat<'a>(&'a [u8], usize);

    impl Read for Repeat<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(buf.len())
        }
    }

    #[test]
    fn header_values_are_utf8_or_refused_by_name() {
        let r = read("GET / HTTP/1.1\r\nHost: x\r\nX-Note:  café ✓ \r\n\r\n".as_bytes()).unwrap();
        assert_eq!(r.header("x-note"), Some("café ✓"));
        let e = read(b"GET / HTTP/1.1\r\nHost: x\r\nX-Note: \xff\xfe\r\n\r\n").unwrap_err();
        let r = e.refusal().unwrap();
        assert_eq!((r.status, r.code), (400, "BadRequest"));
        assert!(r.message.contains("x-note"), "{}", r.message);
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(read(b"GET / HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(
            status(read(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")),
            400
        );
        // HTTP/1.0 needs none.
        assert!(read(b"GET /latest/meta-data HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn body_framing_rules() {
        let post = |fields: &str, body: &str| {
            read(format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n{body}").as_bytes())
        };
        assert_eq!(post("", "ignored").unwrap().body, b"");
        assert_eq!(
            post("Content-Length: 3\r\n", "abcdef").unwrap().body,
            b"abc"
        );
        let same = post("Content-Length: 3\r\nContent-Length: 003\r\n", "abc");
        assert_eq!(same.unwrap().body, b"abc");
        for bad in ["-5", "+5", "5 5", "5,5", "0x5", ""] {
            let fields = format!("Content-Length: {bad}\r\n");
            assert_eq!(status(post(&fields, "abcde")), 400, "{bad:?}");
        }
        let differ = post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd");
        assert_eq!(status(differ), 400);
        assert_eq!(status(post("Content-Length: 1025\r\n", "")), 413);
        let huge = post("Content-Length: 184467440737095516160\r\n", "");
        assert_eq!(status(huge), 413);
        let chunked = post("Transfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(status(chunked), 411);
        assert_eq!(status(post("Content-Length: 5\r\n", "abc")), 400);
    }

    #[test]
    fn expect_continue_is_noticed() {
        let input =
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        let head = read_head(&mut &input[..], &Limits::with_body(1024)).unwrap();
        assert!(head.expect_continue);
        assert_eq!(head.content_length, 2);
    }

    #[test]
    fn silence_is_not_answered_and_a_stall_mid_request_is_a_timeout() {
        assert_eq!(read(b""), Err(WireError::Silent));
        assert_eq!(status(read(b"GET / HT")), 400);
        /// Its bytes, then a timeout.
        struct Stall<'a>(&'a [u8]);
        impl Read for Stall<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let k = buf.len().min(self.0.len());
                buf[..k].copy_from_slice(&self.0[..k]);
                self.0 = &self.0[k..];
                Ok(k)
            }
        }
        let lim = Limits::with_body(1024);
        assert_eq!(read_request(&mut Stall(b""), &lim), Err(WireError::Silent));
        let r = read_request(&mut Stall(b"GET / HTTP/1.1\r\n"), &lim);
        assert_eq!(status(r), 408);
        let r = read_request(
            &mut Stall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc"),
            &lim,
        );
        assert_eq!(status(r), 408);
    }

    #[test]
    fn malformed_heads_say_what_is_wrong() {
        for (input, want) in [
            (&b"GARBAGE\r\n\r\n"[..], "invalid"),
            (b"\x00\x01\x02\r\n\r\n", "invalid"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "version"),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n folded\r\n\r\n",
                "header",
            ),
        ] {
            let r = read(input).unwrap_err().refusal().unwrap();
            assert_eq!(r.status, 400);
            assert!(r.message.contains(want), "{input:?}: {}", r.message);
        }
    }
}
