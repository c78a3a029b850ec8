//! Shared helpers of the emulator tests: start the real binary, talk signed HTTP to it.
#![allow(dead_code)]

pub mod netns;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use terway::cloud::sign;

pub const KEY_ID: &str = "LTAI5tEmulatorKey0000001";
pub const SECRET: &str = "emulator-secret-change-me";
pub const REGION: &str = "cn-hangzhou";
pub const A: &str = "i-emu000000000000000a";
pub const B: &str = "i-emu000000000000000b";
pub const VSW_A: &str = "vsw-emu0000000000000000a";
pub const VSW_B: &str = "vsw-emu0000000000000000b";
pub const SG: &str = "sg-emu00000000000000001";
pub const ECS: &str = "2014-05-26";
pub const VPC: &str = "2016-04-28";

static NONCE: AtomicU64 = AtomicU64::new(1);

pub fn nonce() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_secs(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_terway")
}

/// A running `terway emulate`, killed on drop.
pub struct Emu {
    pub child: Child,
    pub addr: String,
    pub banner: Vec<String>,
    agent: ureq::Agent,
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default config with faster timings, written to a temp file.
pub fn fast_config(tag: &str, attach_ms: u64, lag_ms: u64) -> std::path::PathBuf {
    let out = Command::new(bin())
        .args(["emulate", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["timing"] = serde_json::json!({"attach_delay_ms": attach_ms, "detach_delay_ms": attach_ms,
        "metadata_lag_ms": lag_ms, "delete_delay_ms": attach_ms});
    let path = std::env::temp_dir().join(format!("terway-emu-{}-{tag}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    path
}

impl Emu {
    pub fn start(extra: &[&str]) -> Emu {
        let mut child = Command::new(bin())
            .args(["emulate", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn terway emulate");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("emulator printed nothing").unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .expect(&first)
            .to_string();
        let mut banner = vec![first];
        // The banner is short; read it so it is visible to the tests, then drain in background.
        for l in lines.by_ref().take(4).map_while(Result::ok) {
            banner.push(l);
        }
        std::thread::spawn(move || for _ in lines {});
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Emu {
            child,
            addr,
            banner,
            agent,
        }
    }

    pub fn fast(tag: &str) -> Emu {
        let cfg = fast_config(tag, 300, 600);
        Emu::start(&["--config", cfg.to_str().unwrap()])
    }

    fn read(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
        let mut r = resp.expect("HTTP exchange");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    }

    fn json(status_body: (u16, String)) -> (u16, Value) {
        let (s, b) = status_body;
        let v = serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"));
        (s, v)
    }

    /// A V3-signed RPC call with the parameters in the query string (`RegionId` added).
    pub fn call_as(
        &self,
        key: &str,
        secret: &str,
        token: Option<&str>,
        action: &str,
        version: &str,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut q: Vec<(&str, &str)> = params.to_vec();
        if !q.iter().any(|(k, _)| *k == "RegionId") {
            q.push(("RegionId", REGION));
        }
        self.call_exact(key, secret, token, action, version, &q)
    }

    /// A V3-signed RPC call with exactly these parameters.
    pub fn call_exact(
        &self,
        key: &str,
        secret: &str,
        token: Option<&str>,
        action: &str,
        version: &str,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        let q: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let date = sign::format_timestamp(now_secs());
        let nonce = nonce();
        let req = sign::V3Request {
            method: "POST",
            host: &self.addr,
            path: "/",
            query: &q,
            action,
            version,
            body: b"",
            extra_headers: &[],
            key_id: key,
            secret,
            security_token: token,
            date: &date,
            nonce: &nonce,
        };
        let headers = sign::sign_v3(&req);
        let url = format!("http://{}/?{}", self.addr, sign::canonical_query(&q));
        let mut r = self.agent.post(&url);
        for (k, v) in &headers {
            if k != "host" {
                r = r.header(k, v);
            }
        }
        Emu::json(Emu::read(r.send_empty()))
    }

    pub fn call(&self, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let version = if [
            "DescribeVSwitches",
            "CreateRouteEntry",
            "DeleteRouteEntry",
            "DescribeRouteEntryList",
            "DescribeRouteTableList",
        ]
        .contains(&action)
        {
            VPC
        } else {
            ECS
        };
        self.call_as(KEY_ID, SECRET, None, action, version, params)
    }

    /// A call that must succeed.
    pub fn ok(&self, action: &str, params: &[(&str, &str)]) -> Value {
        let (s, v) = self.call(action, params);
        assert_eq!(s, 200, "{action} failed: {v}");
        assert!(v["RequestId"].is_string());
        v
    }

    /// A call that must fail with `code`; returns the error body.
    pub fn err(&self, action: &str, params: &[(&str, &str)], status: u16, code: &str) -> Value {
        let (s, v) = self.call(action, params);
        assert_eq!(
            (s, v["Code"].as_str().unwrap_or("")),
            (status, code),
            "{action}: {v}"
        );
        for f in ["RequestId", "HostId", "Code", "Message", "Recommend"] {
            assert!(v[f].is_string(), "{f} missing in {v}");
        }
        v
    }

    /// A V2 (HMAC-SHA1) call; `post` sends the parameters as a form body.
    pub fn call_v2(
        &self,
        secret: &str,
        params: &[(&str, &str)],
        post: bool,
        tweak: impl Fn(&mut Vec<(String, String)>),
    ) -> (u16, Value) {
        let action = params
            .iter()
            .find(|(k, _)| *k == "Action")
            .map(|(_, v)| *v)
            .unwrap_or("DescribeInstanceTypes");
        let mut q = sign::v2_common_params(
            action,
            ECS,
            KEY_ID,
            &sign::format_timestamp(now_secs()),
            &nonce(),
        );
        q.retain(|(k, _)| !params.iter().any(|(pk, _)| pk == k));
        q.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if !q.iter().any(|(k, _)| k == "RegionId") {
            q.push(("RegionId".into(), REGION.into()));
        }
        let method = if post { "POST" } else { "GET" };
        let sig = sign::sign_v2(method, &q, secret);
        q.push(("Signature".into(), sig));
        tweak(&mut q);
        let encoded = sign::canonical_query(&q);
        let resp = if post {
            self.agent
                .post(&format!("http://{}/", self.addr))
                .header("content-type", "application/x-www-form-urlencoded")
                .send(encoded.as_bytes())
        } else {
            self.agent
                .get(&format!("http://{}/?{encoded}", self.addr))
                .call()
        };
        Emu::json(Emu::read(resp))
    }

    pub fn raw(
        &self,
        method: &str,
        path_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let url = format!("http://{}{path_query}", self.addr);
        let resp = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.agent.put(&url),
                    "DELETE" => return Emu::read(self.agent.delete(&url).call()),
                    _ => self.agent.post(&url),
                };
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(body)
            }
        };
        Emu::read(resp)
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> Value {
        let (s, b) = self.raw(method, path, &[], body.as_bytes());
        assert_eq!(s, 200, "{method} {path}: {b}");
        serde_json::from_str(&b).unwrap_or(Value::Null)
    }

    pub fn meta(&self, inst: &str, path: &str) -> (u16, String) {
        self.raw(
            "GET",
            &format!("/instances/{inst}/latest/meta-data/{path}"),
            &[],
            b"",
        )
    }

    /// Polls `f` until it returns true (or panics after `secs`).
    pub fn wait_until(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn eni(&self, id: &str) -> Value {
        let v = self.ok("DescribeNetworkInterfaces", &[("NetworkInterfaceId.1", id)]);
        v["NetworkInterfaceSets"]["NetworkInterfaceSet"][0].clone()
    }

    pub fn create_eni(&self, vsw: &str, secondary: &str) -> String {
        let v = self.ok(
            "CreateNetworkInterface",
            &[
                ("VSwitchId", vsw),
                ("SecurityGroupIds.1", SG),
                ("SecondaryPrivateIpAddressCount", secondary),
            ],
        );
        v["NetworkInterfaceId"].as_str().unwrap().to_string()
    }

    pub fn attach_and_wait(&self, inst: &str, eni: &str) {
        self.ok(
            "AttachNetworkInterface",
            &[("InstanceId", inst), ("NetworkInterfaceId", eni)],
        );
        self.wait_until(10, "InUse", || self.eni(eni)["Status"] == "InUse");
    }
}
