//! Alibaba Cloud OpenAPI request signing, both directions: the client signs, the emulator verifies
//! with the very same canonicalization, so a bug cannot hide on one side only.
//!
//! - V3 `ACS3-HMAC-SHA256`: signed headers + canonical request, hex HMAC-SHA256 with the raw secret.
//! - V2 `HMAC-SHA1` (RPC): canonical query string, base64 HMAC-SHA1 with key `secret + "&"`.
//!
//! Both reproduce the published examples exactly (see the tests). Pure: time and nonces are
//! passed in.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::Digest as _;

/// The V3 algorithm name, first word of the `Authorization` header.
pub const ALGORITHM_V3: &str = "ACS3-HMAC-SHA256";
/// The V2 `SignatureMethod` value.
pub const METHOD_V2: &str = "HMAC-SHA1";
/// Headers a V3 request must sign (besides any other `x-acs-*` it sends).
pub const V3_REQUIRED_SIGNED: &[&str] = &[
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
];

/// Why a request's signature was rejected. The emulator maps these to the cloud's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// A required parameter or header is absent (its name).
    Missing(String),
    /// The `Authorization` header or a signature parameter is malformed (what is wrong).
    Malformed(String),
    /// The access key id is unknown.
    UnknownKey(String),
    /// The signature does not match; carries the server's string to sign (safe to show: no secret).
    Mismatch { string_to_sign: String },
}

/// RFC 3986 percent-encoding as Aliyun wants it: unreserved `A-Za-z0-9-_.~` stay, every other
/// byte of the UTF-8 form becomes `%XY` (upper-case hex); space is `%20`, `*` is `%2A`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0xf)])
}

/// Decodes a URL query or form component (`%XY`, and `+` as space as forms send it).
/// `None` when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = bytes.get(i + 1..i + 3)?;
                let hs = std::str::from_utf8(h).ok()?;
                out.push(u8::from_str_radix(hs, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `a=1&b=2` (query string or form body) into decoded pairs, keeping order and repeats.
pub fn parse_query(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Some(out)
}

/// Canonical query string: encoded `name=value` pairs sorted by encoded name (then value), `&`-joined.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = match hmac::Hmac::<sha1::Sha1>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Compares without an early exit, so timing does not reveal how much of a signature matched.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Canonical headers block and the signed header list from `(name, value)` pairs: names
/// lower-cased, values trimmed, sorted by name, repeated names joined with `,`.
pub fn v3_canonical_headers(headers: &[(String, String)]) -> (String, String) {
    let mut hs: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        let v = v.trim().to_string();
        match hs.iter_mut().find(|(n, _)| *n == k) {
            Some((_, old)) => {
                old.push(',');
                old.push_str(&v);
            }
            None => hs.push((k, v)),
        }
    }
    hs.sort();
    let canonical: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let names = hs
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (canonical, names)
}

/// The V3 canonical request.
pub fn v3_canonical_request(
    method: &str,
    uri: &str,
    query: &[(String, String)],
    signed_headers: &[(String, String)],
    hashed_payload: &str,
) -> String {
    let (canonical_headers, names) = v3_canonical_headers(signed_headers);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        if uri.is_empty() { "/" } else { uri },
        canonical_query(query),
        canonical_headers,
        names,
        hashed_payload
    )
}

/// `ACS3-HMAC-SHA256\n` + hex SHA-256 of the canonical request.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{ALGORITHM_V3}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Hex HMAC-SHA256 of the string to sign with the raw secret.
pub fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()))
}

/// Everything a V3 signature covers. `date` is `YYYY-MM-DDThh:mm:ssZ` (see [`format_timestamp`]).
/// Its Debug output hides the secret and the STS token.
#[derive(Clone)]
pub struct V3Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Canonical URI; `/` for RPC-style APIs.
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub action: &'a str,
    pub version: &'a str,
    pub body: &'a [u8],
    /// Extra headers to send and sign, e.g. `content-type` (names in any case).
    pub extra_headers: &'a [(String, String)],
    pub key_id: &'a str,
    pub secret: &'a str,
    /// STS token, sent as `x-acs-security-token`.
    pub security_token: Option<&'a str>,
    pub date: &'a str,
    pub nonce: &'a str,
}

impl std::fmt::Debug for V3Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V3Request")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("action", &self.action)
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("security_token", &self.security_token.map(|_| "***"))
            .field("date", &self.date)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// Signs a V3 request: returns every header to send (`host`, `x-acs-*`, extras, `Authorization`).
pub fn sign_v3(r: &V3Request<'_>) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), r.host.into()),
        ("x-acs-action".into(), r.action.into()),
        ("x-acs-content-sha256".into(), sha256_hex(r.body)),
        ("x-acs-date".into(), r.date.into()),
        ("x-acs-signature-nonce".into(), r.nonce.into()),
        ("x-acs-version".into(), r.version.into()),
    ];
    if let Some(t) = r.security_token {
        headers.push(("x-acs-security-token".into(), t.into()));
    }
    for (k, v) in r.extra_headers {
        headers.push((k.to_ascii_lowercase(), v.clone()));
    }
    let canonical = v3_canonical_request(r.method, r.path, r.query, &headers, &sha256_hex(r.body));
    let (_, names) = v3_canonical_headers(&headers);
    let sig = v3_signature(r.secret, &v3_string_to_sign(&canonical));
    headers.push((
        "Authorization".into(),
        format!(
            "{ALGORITHM_V3} Credential={},SignedHeaders={names},Signature={sig}",
            r.key_id
        ),
    ));
    headers
}

/// A parsed V3 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Authorization {
    pub key_id: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<a;b>,Signature=<hex>`.
pub fn parse_v3_authorization(value: &str) -> Result<V3Authorization, SignError> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM_V3)
        .ok_or_else(|| SignError::Malformed(format!("algorithm is not {ALGORITHM_V3}")))?;
    let (mut key_id, mut names, mut sig) = (None, None, None);
    for part in rest.trim().split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| SignError::Malformed(format!("bad Authorization field {part:?}")))?;
        match k {
            "Credential" => key_id = Some(v.to_string()),
            "SignedHeaders" => names = Some(v.to_string()),
            "Signature" => sig = Some(v.to_string()),
            _ => {}
        }
    }
    let key_id = key_id.ok_or_else(|| SignError::Missing("Credential".into()))?;
    let names = names.ok_or_else(|| SignError::Missing("SignedHeaders".into()))?;
    let signature = sig.ok_or_else(|| SignError::Missing("Signature".into()))?;
    if key_id.is_empty() || signature.is_empty() {
        return Err(SignError::Malformed("empty Credential or Signature".into()));
    }
    Ok(V3Authorization {
        key_id,
        signed_headers: names.split(';').map(|s| s.to_ascii_lowercase()).collect(),
        signature,
    })
}

/// Verifies a received V3 request. `headers` are all request headers (any case), `query` the
/// decoded URL query (not the form body: V3 covers the body through its hash). `secret_of`
/// returns the secret of a key id. Returns the key id on success.
pub fn verify_v3(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    body: &[u8],
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<String, SignError> {
    let auth_value = header(headers, "authorization")
        .ok_or_else(|| SignError::Missing("Authorization".into()))?;
    let auth = parse_v3_authorization(auth_value)?;
    for req in V3_REQUIRED_SIGNED {
        if header(headers, req).is_none() {
            return Err(SignError::Missing((*req).to_string()));
        }
        if !auth.signed_headers.iter().any(|n| n == req) {
            return Err(SignError::Malformed(format!("header {req} is not signed")));
        }
    }
    let mut signed = Vec::new();
    for name in &auth.signed_headers {
        if name.is_empty() {
            continue;
        }
        for (k, v) in headers {
            if k.eq_ignore_ascii_case(name) {
                signed.push((name.clone(), v.clone()));
            }
        }
        if !signed.iter().any(|(k, _)| k == name) {
            return Err(SignError::Missing(name.clone()));
        }
    }
    let secret =
        secret_of(&auth.key_id).ok_or_else(|| SignError::UnknownKey(auth.key_id.clone()))?;
    let canonical = v3_canonical_request(method, path, query, &signed, &sha256_hex(body));
    let sts = v3_string_to_sign(&canonical);
    let want = v3_signature(&secret, &sts);
    if constant_eq(
        want.as_bytes(),
        auth.signature.to_ascii_lowercase().as_bytes(),
    ) {
        Ok(auth.key_id)
    } else {
        Err(SignError::Mismatch {
            string_to_sign: sts,
        })
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// V2 string to sign: `METHOD&%2F&` + percent-encoded canonical query (without `Signature`).
pub fn v2_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let filtered: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .cloned()
        .collect();
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode("/"),
        percent_encode(&canonical_query(&filtered))
    )
}

/// V2 signature: base64 HMAC-SHA1 of the string to sign with key `secret + "&"`.
pub fn sign_v2(method: &str, params: &[(String, String)], secret: &str) -> String {
    let key = format!("{secret}&");
    let sts = v2_string_to_sign(method, params);
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(key.as_bytes(), sts.as_bytes()))
}

/// The complete V2 query string (or form body): `params` plus their `Signature`, encoded.
pub fn sign_v2_query(method: &str, params: &[(String, String)], secret: &str) -> String {
    let mut all = params.to_vec();
    all.push(("Signature".into(), sign_v2(method, params, secret)));
    canonical_query(&all)
}

/// The common V2 parameters for a request (add `Signature` = [`sign_v2`] of all params after).
pub fn v2_common_params(
    action: &str,
    version: &str,
    key_id: &str,
    timestamp: &str,
    nonce: &str,
) -> Vec<(String, String)> {
    [
        ("Action", action),
        ("Version", version),
        ("AccessKeyId", key_id),
        ("Format", "JSON"),
        ("SignatureMethod", METHOD_V2),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect()
}

/// Verifies a V2 request: all parameters (query and form) including `Signature`. Returns the key id.
pub fn verify_v2(
    method: &str,
    params: &[(String, String)],
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<String, SignError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let sig = get("Signature").ok_or_else(|| SignError::Missing("Signature".into()))?;
    let key_id = get("AccessKeyId").ok_or_else(|| SignError::Missing("AccessKeyId".into()))?;
    match get("SignatureMethod").as_deref() {
        Some(METHOD_V2) => {}
        Some(m) => {
            return Err(SignError::Malformed(format!(
                "SignatureMethod {m} is not supported"
            )));
        }
        None => return Err(SignError::Missing("SignatureMethod".into())),
    }
    let secret = secret_of(&key_id).ok_or_else(|| SignError::UnknownKey(key_id.clone()))?;
    let want = sign_v2(method, params, &secret);
    if constant_eq(want.as_bytes(), sig.as_bytes()) {
        Ok(key_id)
    } else {
        Err(SignError::Mismatch {
            string_to_sign: v2_string_to_sign(method, params),
        })
    }
}

/// Formats Unix seconds as `YYYY-MM-DDThh:mm:ssZ` (UTC), the form `x-acs-date` and `Timestamp` use.
pub fn format_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Parses `YYYY-MM-DDThh:mm:ssZ` into Unix seconds; `None` if malformed.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    if days < 0 {
        return None;
    }
    Some(days as u64 * 86_400 + h * 3600 + mi * 60 + se)
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Published example of "Request syntax and signature method V3" (ECS RunInstances).
    #[test]
    fn v3_reproduces_published_example() {
        let query = pairs(&[
            ("RegionId", "cn-shanghai"),
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
        ]);
        let req = V3Request {
            method: "POST",
            host: "ecs.cn-shanghai.aliyuncs.com",
            path: "/",
            query: &query,
            action: "RunInstances",
            version: "2014-05-26",
            body: b"",
            extra_headers: &[],
            key_id: "YourAccessKeyId",
            secret: "YourAccessKeySecret",
            security_token: None,
            date: "2023-10-26T10:22:32Z",
            nonce: "3156853299f313e23d1673dc12e1703d",
        };
        let headers = sign_v3(&req);
        let signed: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k != "Authorization")
            .cloned()
            .collect();
        let canonical = v3_canonical_request("POST", "/", &query, &signed, &sha256_hex(b""));
        assert_eq!(
            canonical,
            "POST\n/\nImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n\
             host:ecs.cn-shanghai.aliyuncs.com\nx-acs-action:RunInstances\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2023-10-26T10:22:32Z\nx-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n\
             x-acs-version:2014-05-26\n\n\
             host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            v3_string_to_sign(&canonical),
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "Authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;\
             x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        let secret_of =
            |k: &str| (k == "YourAccessKeyId").then(|| "YourAccessKeySecret".to_string());
        assert_eq!(
            verify_v3("POST", "/", &query, &headers, b"", secret_of).as_deref(),
            Ok("YourAccessKeyId")
        );
        assert!(!format!("{req:?}").contains("YourAccessKeySecret"));
        // A changed parameter, body, wrong secret or unknown key is caught.
        let tampered = pairs(&[("RegionId", "cn-hangzhou"), ("ImageId", "x")]);
        assert!(matches!(
            verify_v3("POST", "/", &tampered, &headers, b"", secret_of),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            verify_v3("POST", "/", &query, &headers, b"a=1", secret_of),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            verify_v3("POST", "/", &query, &headers, b"", |_| Some("other".into())),
            Err(SignError::Mismatch { .. })
        ));
        assert_eq!(
            verify_v3("POST", "/", &query, &headers, b"", |_| None),
            Err(SignError::UnknownKey("YourAccessKeyId".into()))
        );
    }

    #[test]
    fn v3_rejects_malformed_authorization() {
        assert!(parse_v3_authorization("HMAC x").is_err());
        assert!(parse_v3_authorization("ACS3-HMAC-SHA256 Credential=a").is_err());
        assert!(parse_v3_authorization("ACS3-HMAC-SHA256 garbage").is_err());
        let h = pairs(&[(
            "authorization",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=00",
        )]);
        assert!(matches!(
            verify_v3("GET", "/", &[], &h, b"", |_| Some("s".into())),
            Err(SignError::Missing(_))
        ));
    }

    // Published example of the V2 (RPC) signature method: ECS DescribeRegions.
    #[test]
    fn v2_reproduces_published_describe_regions_example() {
        let params = pairs(&[
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Format", "XML"),
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("Version", "2014-05-26"),
            ("SignatureVersion", "1.0"),
        ]);
        assert_eq!(
            v2_string_to_sign("GET", &params),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML\
             %26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf\
             %26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            sign_v2("GET", &params, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        assert!(
            sign_v2_query("GET", &params, "testsecret")
                .contains("&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D&")
        );
        let mut signed = params.clone();
        signed.push(("Signature".into(), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=".into()));
        let secret_of = |k: &str| (k == "testid").then(|| "testsecret".to_string());
        assert_eq!(
            verify_v2("GET", &signed, secret_of).as_deref(),
            Ok("testid")
        );
        assert!(matches!(
            verify_v2("POST", &signed, secret_of),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            verify_v2("GET", &params, secret_of),
            Err(SignError::Missing(_))
        ));
    }

    // Published example of the V2 method: ECS DescribeDedicatedHosts.
    #[test]
    fn v2_reproduces_published_dedicated_hosts_example() {
        let params = pairs(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeDedicatedHosts"),
            ("Format", "JSON"),
            ("RegionId", "cn-beijing"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "edb2b34af0af9a6d14deaf7c1a5315eb"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2023-03-13T08:34:30Z"),
            ("Version", "2014-05-26"),
        ]);
        assert_eq!(
            sign_v2("GET", &params, "testsecret"),
            "9NaGiOspFP5UPcwX8Iwt2YJXXuk="
        );
    }

    #[test]
    fn percent_encoding_follows_aliyun_rules() {
        assert_eq!(percent_encode("ABCabc012-_.~"), "ABCabc012-_.~");
        assert_eq!(percent_encode("a b*c~d"), "a%20b%2Ac~d");
        assert_eq!(
            percent_encode("2016-02-23T12:46:24Z"),
            "2016-02-23T12%3A46%3A24Z"
        );
        assert_eq!(percent_encode("/+="), "%2F%2B%3D");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_decode("a%20b+c%2A").as_deref(), Some("a b c*"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(
            parse_query("A=1&B=&C&Tag.1.Key=k%3D").unwrap(),
            pairs(&[("A", "1"), ("B", ""), ("C", ""), ("Tag.1.Key", "k=")])
        );
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_timestamp("2023-10-26T10:22:32Z"), Some(1_698_315_752));
        assert_eq!(format_timestamp(1_698_315_752), "2023-10-26T10:22:32Z");
        assert_eq!(
            parse_timestamp("2024-02-29T23:59:59Z")
                .map(format_timestamp)
                .as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        assert_eq!(parse_timestamp("2023-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("2023-10-26 10:22:32"), None);
        assert_eq!(parse_timestamp("2023-1a-26T10:22:32Z"), None);
    }
}
