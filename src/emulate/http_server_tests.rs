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
    let input = b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
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
