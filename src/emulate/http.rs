//! The HTTP face of the emulator (routing and handlers; the wire is `http_server`): the RPC
//! OpenAPI with signature checks and faults, the metadata service, and the admin endpoints.

use crate::cloud::sign::{self, SignError};
use crate::emulate::api;
use crate::emulate::config::{AccessKeyCfg, EmuConfig};
use crate::emulate::errors::{self, ApiError};
use crate::emulate::faults::{FaultState, Rng};
use crate::emulate::http_server::{self, Options, Refusal, Reply, Request, Service};
use crate::emulate::metadata::{self, STS_PREFIX};
use crate::emulate::model::{Model, Ms};
use crate::emulate::params::Params;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The x-acs-date / Timestamp window, as the cloud enforces it.
const CLOCK_SKEW_MS: Ms = 15 * 60 * 1000;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// API at `/`, admin at `/admin/...`, metadata at `/instances/<id>/latest/...`.
    Local,
    /// Metadata at `/latest/...`, the instance found by the source address (inside the VPC).
    Metadata,
    /// API only (inside the VPC).
    Api,
}

pub struct Shared {
    pub model: Mutex<Model>,
    pub faults: Mutex<FaultState>,
    keys: Vec<AccessKeyCfg>,
    require_token: bool,
    nonces: Mutex<HashMap<String, Ms>>,
    meta_tokens: Mutex<HashMap<String, (String, Ms)>>,
    rng: Mutex<Rng>,
    /// Told after every successful mutating call (the topology follows the model).
    pub on_change: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

pub fn now_ms() -> Ms {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Ms)
        .unwrap_or(0)
}

/// Locks even if another worker panicked while holding the lock: the data is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(cfg: &EmuConfig, model: Model) -> Shared {
        Shared {
            model: Mutex::new(model),
            faults: Mutex::new(FaultState::new(cfg.faults.clone(), cfg.seed)),
            keys: cfg.access_keys.clone(),
            require_token: cfg.metadata_require_token,
            nonces: Mutex::new(HashMap::new()),
            meta_tokens: Mutex::new(HashMap::new()),
            rng: Mutex::new(Rng(cfg.seed ^ now_ms())),
            on_change: Mutex::new(None),
        }
    }

    fn master_secret(&self) -> &str {
        self.keys
            .first()
            .map(|k| k.secret.as_str())
            .unwrap_or_default()
    }

    fn secret_of(&self, key_id: &str) -> Option<String> {
        if let Some(inst) = key_id.strip_prefix(STS_PREFIX) {
            let m = lock(&self.model);
            return m
                .instances
                .get(inst)
                .filter(|i| i.ram_role.is_some())
                .map(|_| metadata::sts_credentials(self.master_secret(), inst).secret);
        }
        self.keys
            .iter()
            .find(|k| k.id == key_id)
            .map(|k| k.secret.clone())
    }

    fn request_id(&self) -> String {
        let mut r = lock(&self.rng);
        let (a, b) = (r.next_u64(), r.next_u64());
        format!(
            "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

/// The emulator behind one listener: what it serves depends on `mode`.
pub struct Endpoint {
    pub shared: Arc<Shared>,
    pub mode: Mode,
}

impl Service for Endpoint {
    fn handle(&self, req: &Request, peer: SocketAddr) -> Reply {
        handle(&self.shared, req, peer.ip(), self.mode)
    }

    /// In the error style of the API, whichever endpoint was meant (the request may not say).
    fn refuse(&self, r: &Refusal) -> Reply {
        let shared = &self.shared;
        let rid = shared.request_id();
        record(shared, "<unknown>", Err(r.code));
        let region = lock(&shared.model).region_id.clone();
        error_reply(
            &ApiError::new(r.status, r.code, r.message.clone()),
            &rid,
            "Ecs",
            &region,
        )
    }
}

/// Serves `listener` in `mode` until the returned server is stopped.
pub fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mode: Mode,
    opts: Options,
) -> http_server::Server {
    http_server::Server::start(listener, Arc::new(Endpoint { shared, mode }), opts)
}

/// The parts of a request the API looks at.
struct HttpReq<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
}

impl HttpReq<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn handle(shared: &Shared, req: &Request, source: IpAddr, mode: Mode) -> Reply {
    let method = req.method.to_ascii_uppercase();
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let headers = &req.headers;
    if path.starts_with("/admin/") && mode == Mode::Local {
        admin(shared, &method, path, &req.body)
    } else if let Some(rest) = path
        .strip_prefix("/instances/")
        .filter(|_| mode == Mode::Local)
    {
        let (inst, sub) = rest.split_once('/').unwrap_or((rest, ""));
        metadata_http(shared, inst, &format!("/{sub}"), &method, headers)
    } else if mode == Mode::Metadata {
        let inst = match source {
            IpAddr::V4(v4) => lock(&shared.model).instance_by_ip(v4).map(str::to_string),
            IpAddr::V6(_) => None,
        };
        match inst {
            Some(i) => metadata_http(shared, &i, path, &method, headers),
            None => Reply::text(403, "Forbidden: unknown source address"),
        }
    } else {
        let r = HttpReq {
            method: &method,
            path,
            query,
            headers,
            body: &req.body,
        };
        api_http(shared, &r)
    }
}

fn record(shared: &Shared, action: &str, outcome: Result<(), &str>) {
    lock(&shared.faults).record(action, outcome);
}

fn error_reply(e: &ApiError, request_id: &str, product: &str, region: &str) -> Reply {
    let host = if product == "Vpc" { "vpc" } else { "ecs" };
    Reply::json(
        e.status,
        &json!({
            "RequestId": request_id,
            "HostId": format!("{host}-vpc.{region}.aliyuncs.com"),
            "Code": e.code,
            "Message": e.message,
            "Recommend": format!(
                "https://api.aliyun.com/troubleshoot?q={}&product={product}&requestId={request_id}",
                e.code
            ),
        }),
    )
}

fn api_http(shared: &Shared, r: &HttpReq<'_>) -> Reply {
    let rid = shared.request_id();
    let region = lock(&shared.model).region_id.clone();
    let v3 = r.header("authorization").is_some();
    let mut action_seen = None;
    let result = api_call(shared, r, v3, &mut action_seen);
    let action_name = action_seen.unwrap_or_else(|| "<unknown>".into());
    let product = api::product(&action_name).unwrap_or("Ecs");
    match result {
        Ok(mut v) => {
            record(shared, &action_name, Ok(()));
            v["RequestId"] = json!(rid);
            if !action_name.starts_with("Describe")
                && let Some(tx) = lock(&shared.on_change).as_ref()
            {
                let _ = tx.send(());
            }
            Reply::json(200, &v)
        }
        Err(e) => {
            record(shared, &action_name, Err(&e.code));
            log::info!("{action_name}: {}", e.code);
            error_reply(&e, &rid, product, &region)
        }
    }
}

fn api_call(
    shared: &Shared,
    r: &HttpReq<'_>,
    v3: bool,
    action_seen: &mut Option<String>,
) -> Result<Value, ApiError> {
    let (method, path, headers, body) = (r.method, r.path, r.headers, r.body);
    if method != "GET" && method != "POST" {
        return Err(errors::unknown_action());
    }
    if path != "/" {
        return Err(errors::unknown_action());
    }
    let header = |n: &str| r.header(n);
    let query = r.query;
    let query_params = sign::parse_query(query).ok_or_else(|| errors::invalid("QueryString"))?;
    let mut params = query_params.clone();
    let form =
        header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form && !body.is_empty() {
        let text = std::str::from_utf8(body).map_err(|_| errors::invalid("Body"))?;
        params.extend(sign::parse_query(text).ok_or_else(|| errors::invalid("Body"))?);
    }
    let p = Params(params);
    let action = if v3 {
        header("x-acs-action").ok_or_else(|| errors::missing("x-acs-action"))?
    } else {
        p.req("Action")?
    };
    *action_seen = Some(action.to_string());
    let product = api::product(action).ok_or_else(errors::unknown_action)?;
    let version = if v3 {
        header("x-acs-version").ok_or_else(|| errors::missing("x-acs-version"))?
    } else {
        p.req("Version")?
    };
    if version != api::version_of(product) {
        return Err(errors::invalid_version());
    }
    let now = now_ms();
    let (key_id, nonce, stamp) = if v3 {
        let key = sign::verify_v3(method, path, &query_params, headers, body, |k| {
            shared.secret_of(k)
        })
        .map_err(sign_error)?;
        let date = header("x-acs-date").unwrap_or_default();
        (
            key,
            header("x-acs-signature-nonce")
                .unwrap_or_default()
                .to_string(),
            date.to_string(),
        )
    } else {
        if p.opt("SignatureVersion") != Some("1.0") {
            return Err(p.opt("SignatureVersion").map_or_else(
                || errors::missing("SignatureVersion"),
                |_| errors::invalid("SignatureVersion"),
            ));
        }
        let nonce = p.req("SignatureNonce")?.to_string();
        let stamp = p.req("Timestamp")?.to_string();
        let key = sign::verify_v2(method, &p.0, |k| shared.secret_of(k)).map_err(sign_error)?;
        (key, nonce, stamp)
    };
    if let Some(inst) = key_id.strip_prefix(STS_PREFIX) {
        let want = metadata::sts_credentials(shared.master_secret(), inst).token;
        let got = if v3 {
            header("x-acs-security-token")
        } else {
            p.opt("SecurityToken")
        };
        if got != Some(want.as_str()) {
            return Err(ApiError::new(
                400,
                "InvalidSecurityToken.Mismatch",
                "Specified SecurityToken is invalid.",
            ));
        }
    }
    let t = sign::parse_timestamp(&stamp).ok_or_else(errors::timestamp_format)? * 1000;
    if t + CLOCK_SKEW_MS < now || t > now + CLOCK_SKEW_MS {
        return Err(errors::timestamp_expired());
    }
    {
        let mut nonces = lock(&shared.nonces);
        nonces.retain(|_, exp| *exp > now);
        if nonces
            .insert(format!("{key_id}:{nonce}"), now + 2 * CLOCK_SKEW_MS)
            .is_some()
        {
            return Err(errors::nonce_used());
        }
    }
    let latency = lock(&shared.faults).latency(action);
    if latency > 0 {
        std::thread::sleep(Duration::from_millis(latency));
    }
    lock(&shared.faults).admit(action, now_ms())?;
    let answer = {
        let mut m = lock(&shared.model);
        api::handle(&mut m, action, &p, now_ms())
    };
    if answer.is_ok() && lock(&shared.faults).lose_answer(action) {
        return Err(errors::internal());
    }
    answer
}

fn sign_error(e: SignError) -> ApiError {
    match e {
        SignError::Missing(what) => errors::missing(&what),
        SignError::Malformed(what) => errors::incomplete_signature(&what),
        SignError::UnknownKey(_) => errors::key_not_found(),
        SignError::Mismatch { string_to_sign } => errors::signature_mismatch(&string_to_sign),
    }
}

fn metadata_http(
    shared: &Shared,
    inst: &str,
    path: &str,
    method: &str,
    headers: &[(String, String)],
) -> Reply {
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let now = now_ms();
    if !lock(&shared.model).instances.contains_key(inst) {
        return Reply::text(404, "Not Found");
    }
    if path == "/latest/api/token" {
        if method != "PUT" {
            return Reply::text(405, "Method Not Allowed");
        }
        let ttl =
            header("x-aliyun-ecs-metadata-token-ttl-seconds").and_then(|v| v.parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return Reply::text(
                400,
                "Bad Request: X-aliyun-ecs-metadata-token-ttl-seconds must be 1..21600",
            );
        };
        let token = {
            let mut r = lock(&shared.rng);
            format!("{:016x}{:016x}", r.next_u64(), r.next_u64())
        };
        let mut tokens = lock(&shared.meta_tokens);
        tokens.retain(|_, (_, exp)| *exp > now);
        tokens.insert(token.clone(), (inst.to_string(), now + ttl * 1000));
        return Reply::text(200, token);
    }
    if method != "GET" {
        return Reply::text(405, "Method Not Allowed");
    }
    match header("x-aliyun-ecs-metadata-token") {
        Some(t) => {
            let ok = lock(&shared.meta_tokens)
                .get(t)
                .is_some_and(|(i, exp)| i == inst && *exp > now);
            if !ok {
                return Reply::text(401, "Unauthorized");
            }
        }
        None if shared.require_token => return Reply::text(401, "Unauthorized"),
        None => {}
    }
    let Some(sub) = path.strip_prefix("/latest/meta-data") else {
        return Reply::text(404, "Not Found");
    };
    let mut m = lock(&shared.model);
    m.advance(now);
    match metadata::answer(&m, inst, sub, now, shared.master_secret()) {
        Some(body) => Reply::text(200, body),
        None => Reply::text(404, "Not Found"),
    }
}

fn admin(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Reply {
    let bad = |m: String| Reply::json(400, &json!({"error": m}));
    match (method, path) {
        ("GET", "/admin/health") => Reply::text(200, "ok"),
        ("GET", "/admin/model") => {
            let mut m = lock(&shared.model);
            m.advance(now_ms());
            Reply::json(200, &serde_json::to_value(&*m).unwrap_or_default())
        }
        ("GET", "/admin/calls") => Reply::json(
            200,
            &serde_json::to_value(lock(&shared.faults).calls()).unwrap_or_default(),
        ),
        ("POST", "/admin/calls/reset") | ("DELETE", "/admin/calls") => {
            lock(&shared.faults).reset_calls();
            Reply::json(200, &json!({}))
        }
        ("GET", "/admin/faults") => Reply::json(
            200,
            &serde_json::to_value(&lock(&shared.faults).faults).unwrap_or_default(),
        ),
        ("PUT" | "POST", "/admin/faults") => {
            let f: crate::emulate::faults::Faults = match serde_json::from_slice(body) {
                Ok(f) => f,
                Err(e) => return bad(format!("faults: {e}")),
            };
            {
                let mut m = lock(&shared.model);
                let ids: Vec<String> = m.vswitches.keys().cloned().collect();
                if let Some(unknown) = f.vswitch_free_cap.keys().find(|k| !ids.contains(k)) {
                    return bad(format!("unknown vSwitch {unknown}"));
                }
                for id in ids {
                    let _ = m.set_free_cap(&id, f.vswitch_free_cap.get(&id).copied());
                }
            }
            lock(&shared.faults).faults = f;
            Reply::json(200, &json!({}))
        }
        ("GET", "/admin/timing") => Reply::json(
            200,
            &serde_json::to_value(&lock(&shared.model).timing).unwrap_or_default(),
        ),
        ("PUT" | "POST", "/admin/timing") => match serde_json::from_slice(body) {
            Ok(t) => {
                lock(&shared.model).timing = t;
                Reply::json(200, &json!({}))
            }
            Err(e) => bad(format!("timing: {e}")),
        },
        _ => Reply::json(
            404,
            &json!({"error": format!("no admin endpoint {method} {path}")}),
        ),
    }
}
