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
#[path = "http_server_tests.rs"]
mod tests;
