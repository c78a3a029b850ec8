//! The cloud client (`terway::cloud`) against the real `terway emulate` binary over loopback:
//! every typed action, metadata with the token flow, credentials, throttling and error
//! injection with retries, final errors, timeouts, and no secrets in logs.

mod emulate_support;

use emulate_support::*;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use terway::cloud::{
    CloudConfig, CloudError, CredentialProvider, CredentialSource, Ecs, EniFilter, HttpConfig,
    Metadata, RetryPolicy,
};

/// Every log line of this test binary, to prove that no secret is ever logged.
struct Capture;
static LOGS: Mutex<String> = Mutex::new(String::new());
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let mut l = LOGS.lock().unwrap_or_else(|p| p.into_inner());
        l.push_str(&format!("{} {}: {}\n", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(40),
        max_delay: Duration::from_millis(400),
        ..RetryPolicy::default()
    }
}

fn config(emu: &Emu, attempts: u32) -> CloudConfig {
    CloudConfig {
        region_id: REGION.into(),
        ecs_endpoint: format!("http://{}", emu.addr),
        vpc_endpoint: format!("http://{}/", emu.addr),
        retry: fast_retry(attempts),
        rate_limits: vec![],
    }
}

fn static_creds(key: &str, secret: &str) -> Arc<CredentialProvider> {
    Arc::new(CredentialProvider::new(
        CredentialSource::Static {
            access_key: key.into(),
            access_secret: secret.into(),
        },
        None,
    ))
}

fn client(emu: &Emu, attempts: u32) -> Ecs {
    capture_logs();
    Ecs::new(config(emu, attempts), static_creds(KEY_ID, SECRET)).unwrap()
}

fn metadata(emu: &Emu, inst: &str) -> Metadata {
    Metadata::new(&format!("http://{}/instances/{inst}", emu.addr))
}

fn count(ecs: &Ecs, action: &str) -> u64 {
    ecs.call_counts()
        .into_iter()
        .find(|(a, _)| a == action)
        .map_or(0, |(_, n)| n)
}

fn sgs() -> Vec<String> {
    vec![SG.to_string()]
}

fn tags() -> Vec<(String, String)> {
    vec![("creator".into(), "terway-test".into())]
}

#[test]
fn eni_lifecycle_with_paging_idempotency_and_unassign_of_gone_ips() {
    let emu = Emu::fast("cc-life");
    let ecs = client(&emu, 4).with_page_size(10);
    // ClientToken: the same token gives the same ENI, even when attempts fail on the way.
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"error_rate": 0.5, "error_actions": ["CreateNetworkInterface"]}"#,
    );
    let a = ecs
        .create_eni(VSW_A, &sgs(), 3, &tags(), "test eni", "tok-a-1")
        .unwrap();
    let again = ecs
        .create_eni(VSW_A, &sgs(), 3, &tags(), "test eni", "tok-a-1")
        .unwrap();
    assert_eq!(a.id, again.id);
    assert_eq!(a.secondary_ips, again.secondary_ips);
    let calls = emu.admin("GET", "/admin/calls", "");
    let create = &calls["CreateNetworkInterface"];
    assert!(
        create["total"].as_u64() > create["ok"].as_u64(),
        "some attempts failed and were retried: {calls}"
    );
    assert_eq!(create["ok"], 2);
    let model = emu.admin("GET", "/admin/model", "");
    assert_eq!(
        model["enis"].as_array().map(Vec::len),
        Some(3),
        "one ENI for one token"
    );
    emu.admin("PUT", "/admin/faults", "{}");
    assert_eq!(
        (a.status.as_str(), a.eni_type.as_str()),
        ("Available", "Secondary")
    );
    assert_eq!(a.secondary_ips.len(), 3);
    assert_eq!(a.vswitch_id, VSW_A);
    assert!(a.mac.starts_with("00:16:3e"), "{}", a.mac);
    assert!(a.tags.contains(&("creator".into(), "terway-test".into())));
    let b = ecs
        .create_eni(VSW_A, &sgs(), 0, &[], "", "tok-b-1")
        .unwrap();
    assert!(b.secondary_ips.is_empty());

    ecs.attach_eni(A, &a.id).unwrap();
    ecs.attach_eni(A, &b.id).unwrap();
    let a_in = ecs
        .wait_eni_status(&a.id, "InUse", Duration::from_secs(10))
        .unwrap();
    assert_eq!(a_in.instance_id.as_deref(), Some(A));
    ecs.wait_eni_status(&b.id, "InUse", Duration::from_secs(10))
        .unwrap();

    // Primary + 2 = 3 ENIs on A.
    let on_a = ecs
        .describe_enis(&EniFilter {
            instance_id: Some(A.into()),
            ..EniFilter::default()
        })
        .unwrap();
    assert_eq!(on_a.len(), 3, "{on_a:?}");
    // 2 primaries + a + b + 9 more = 13 ENIs, 10 per page.
    for i in 0..9 {
        ecs.create_eni(VSW_B, &sgs(), 0, &[], "", &format!("tok-page-{i}"))
            .unwrap();
    }
    let before = count(&ecs, "DescribeNetworkInterfaces");
    let all = ecs.describe_enis(&EniFilter::default()).unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(
        count(&ecs, "DescribeNetworkInterfaces") - before,
        2,
        "two pages"
    );
    assert!(on_a.iter().any(|e| e.eni_type == "Primary"));
    let tagged = ecs
        .describe_enis(&EniFilter {
            tags: tags(),
            status: Some("InUse".into()),
            ..EniFilter::default()
        })
        .unwrap();
    assert_eq!(
        tagged.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [a.id.as_str()]
    );

    // 12 addresses take two calls of at most 10.
    let new = ecs.assign_ips(&a.id, 12).unwrap();
    assert_eq!(new.len(), 12);
    let now = ecs
        .describe_enis(&EniFilter {
            eni_ids: vec![a.id.clone()],
            ..EniFilter::default()
        })
        .unwrap();
    assert_eq!(now[0].secondary_ips.len(), 15);
    ecs.unassign_ips(&a.id, &new[..2]).unwrap();
    // Already gone: fine. Gone and present mixed: the present ones go.
    ecs.unassign_ips(&a.id, &new[..2]).unwrap();
    ecs.unassign_ips(&a.id, &new[1..4]).unwrap();
    let left = ecs
        .wait_eni_status(&a.id, "InUse", Duration::from_secs(1))
        .unwrap();
    assert_eq!(left.secondary_ips.len(), 11);
    assert!(!left.secondary_ips.iter().any(|ip| new[..4].contains(ip)));
    assert_eq!(ecs.assign_ips(&a.id, 0).unwrap(), Vec::<Ipv4Addr>::new());

    ecs.detach_eni(A, &a.id).unwrap();
    let avail = ecs
        .wait_eni_status(&a.id, "Available", Duration::from_secs(10))
        .unwrap();
    assert_eq!(avail.instance_id, None);
    // Deleting is asynchronous: `Deleting` for a while, then not found.
    ecs.delete_eni(&a.id).unwrap();
    let deleting = ecs
        .wait_eni_status(&a.id, "Deleting", Duration::from_secs(1))
        .unwrap();
    assert_eq!(deleting.instance_id, None);
    let e = ecs
        .wait_eni_status(&a.id, "Available", Duration::from_secs(10))
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let gone = ecs
        .describe_enis(&EniFilter {
            eni_ids: vec![a.id.clone()],
            ..EniFilter::default()
        })
        .unwrap();
    assert!(gone.is_empty());
    // Waiting for a state that never comes times out.
    let e = ecs
        .wait_eni_status(&b.id, "Available", Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(e.code, "Timeout", "{e}");
    let e = ecs.delete_eni(&b.id).unwrap_err();
    assert_eq!(e.code, "InvalidOperation.InvalidEniState", "{e}");
    assert!(!e.request_id.is_empty());
    let calls = emu.admin("GET", "/admin/calls", "");
    assert_eq!(
        calls["CreateNetworkInterface"]["total"].as_u64(),
        Some(count(&ecs, "CreateNetworkInterface"))
    );
}

#[test]
fn instance_types_and_vswitches() {
    let emu = Emu::fast("cc-types");
    let ecs = client(&emu, 3);
    let t = ecs
        .describe_instance_types(&["ecs.g7.4xlarge".to_string()])
        .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (
            t[0].eni_quantity,
            t[0].eni_private_ip_quantity,
            t[0].eni_total_quantity
        ),
        (8, 30, 50)
    );
    assert!(t[0].trunk_supported);
    assert_eq!(ecs.describe_instance_types(&[]).unwrap().len(), 3);
    let v = ecs
        .describe_vswitches(&[VSW_B.to_string(), VSW_A.to_string()])
        .unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].id, VSW_B);
    assert_eq!(v[0].cidr, "172.16.1.0/26".parse().unwrap());
    assert_eq!(v[1].zone_id, "cn-hangzhou-k");
    assert!(v[1].available_ips > 200);
    assert_eq!(ecs.describe_vswitches(&[]).unwrap().len(), 2);
    let e = ecs.describe_vswitches(&["vsw-nope".to_string()]).unwrap();
    assert!(e.is_empty());
}

/// A node's vSwitches are described by one listing of its VPC's zone, not a call each: counted
/// in calls, over more than one page, with ids of another zone and unknown ids falling back to
/// one call each.
#[test]
fn vswitches_of_a_zone_come_from_one_listing() {
    let path = fast_config("cc-vsw-list", 300, 600);
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["zones"] = serde_json::json!(["cn-hangzhou-k", "cn-hangzhou-j"]);
    let vsws = cfg["vswitches"].as_array_mut().unwrap();
    for i in 0..120 {
        vsws.push(
            serde_json::json!({"id": format!("vsw-zk{i:03}"), "zone": "cn-hangzhou-k",
            "cidr": format!("172.20.{i}.0/24")}),
        );
    }
    vsws.push(
        serde_json::json!({"id": "vsw-zj001", "zone": "cn-hangzhou-j", "cidr": "172.21.0.0/24"}),
    );
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let emu = Emu::start(&["--config", path.to_str().unwrap()]);
    let ecs = client(&emu, 3);
    let vpc = metadata(&emu, A).vpc_id().unwrap();
    let zone = "cn-hangzhou-k";
    let ids = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut before = 0;
    let mut calls = || {
        let now = count(&ecs, "DescribeVSwitches");
        std::mem::replace(&mut before, now).abs_diff(now)
    };
    calls();

    // Both on the first page (the listing is in id order): one call for both.
    let got = ecs
        .describe_vswitches_in(&vpc, zone, &ids(&[VSW_B, VSW_A]))
        .unwrap();
    let mut seen: Vec<_> = got
        .iter()
        .map(|v| (v.id.as_str(), v.cidr.to_string()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (VSW_A, "172.16.0.0/24".into()),
            (VSW_B, "172.16.1.0/26".to_string())
        ]
    );
    assert_eq!(calls(), 1);
    // A repeated id is one vSwitch: still one call, each once.
    let got = ecs
        .describe_vswitches_in(&vpc, zone, &ids(&[VSW_A, VSW_B, VSW_A]))
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(calls(), 1);
    // The listing reads on while fewer pages are left than ids unseen: three ids, two unseen
    // after page 1 and two pages left, so those two are asked for alone.
    let got = ecs.describe_vswitches_in(&vpc, zone, &ids(&[VSW_A, "vsw-zk060", "vsw-zk110"]));
    assert_eq!(got.unwrap().len(), 3);
    assert_eq!(calls(), 1 + 2);
    // Four ids, three unseen after page 1 with two pages left: the listing reads page 2, which
    // shows two of them, and the last one is asked for alone.
    let four = ids(&[VSW_A, "vsw-zk060", "vsw-zk070", "vsw-zk110"]);
    assert_eq!(
        ecs.describe_vswitches_in(&vpc, zone, &four).unwrap().len(),
        4
    );
    assert_eq!(calls(), 3);
    // Another zone's and an unknown one: asked for alone; the unknown one is simply absent.
    let got = ecs.describe_vswitches_in(&vpc, zone, &ids(&[VSW_A, "vsw-zj001", "vsw-nope"]));
    let mut found: Vec<_> = got.unwrap().into_iter().map(|v| v.id).collect();
    found.sort();
    assert_eq!(found, [VSW_A, "vsw-zj001"]);
    assert_eq!(calls(), 1 + 2);
    // One id, or no VPC id (metadata did not tell): a call by id each, as before.
    assert_eq!(
        ecs.describe_vswitches_in(&vpc, zone, &ids(&[VSW_B]))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(calls(), 1);
    let twice = ids(&[VSW_B, VSW_B]);
    assert_eq!(
        ecs.describe_vswitches_in(&vpc, zone, &twice).unwrap().len(),
        1
    );
    assert_eq!(calls(), 1);
    assert_eq!(
        ecs.describe_vswitches_in("", zone, &ids(&[VSW_A, VSW_B]))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(calls(), 2);
    // A VPC that does not exist is the cloud's error, not an empty answer.
    let e = ecs.describe_vswitches_in("vpc-nope", zone, &ids(&[VSW_A, VSW_B]));
    assert_eq!(e.unwrap_err().code, "InvalidVpcId.NotFound");
}

#[test]
fn metadata_facts_enis_after_the_lag_and_token_flow() {
    capture_logs();
    // Hardened mode: no token, no answer.
    let cfg = fast_config("cc-meta", 200, 600);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["metadata_require_token"] = Value::Bool(true);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let emu = Emu::start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(emu.meta(A, "instance-id").0, 401);
    let md = metadata(&emu, A);
    assert_eq!(md.instance_id().unwrap(), A);
    assert!(md.has_session_token());
    assert_eq!(md.instance_type().unwrap(), "ecs.g7.4xlarge");
    assert_eq!(md.region_id().unwrap(), REGION);
    assert_eq!(md.zone_id().unwrap(), "cn-hangzhou-k");
    assert!(md.vpc_id().unwrap().starts_with("vpc-"));
    assert_eq!(md.vswitch_id().unwrap(), VSW_A);
    let mac = md.primary_mac().unwrap();
    assert_eq!(md.macs().unwrap(), vec![mac.clone()]);
    let primary = md.eni(&mac).unwrap();
    assert_eq!(primary.vswitch_id, VSW_A);
    assert_eq!(primary.vswitch_cidr, "172.16.0.0/24".parse().unwrap());
    assert_eq!(primary.gateway, Ipv4Addr::new(172, 16, 0, 253));
    assert_eq!(primary.private_ipv4s, vec![primary.primary_ip]);
    // A stale token is refused with 401: the client fetches a new one and carries on.
    md.set_session_token("stale");
    assert_eq!(md.region_id().unwrap(), REGION);
    let e = md.get("no/such/path").unwrap_err();
    assert_eq!((e.code.as_str(), e.http_status), ("NotFound", 404));

    // An attached ENI with addresses shows up per MAC once metadata catches up.
    let ecs = client(&emu, 3);
    let eni = ecs.create_eni(VSW_A, &sgs(), 2, &[], "", "").unwrap();
    ecs.attach_eni(A, &eni.id).unwrap();
    ecs.wait_eni_status(&eni.id, "InUse", Duration::from_secs(10))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !md.macs().unwrap().contains(&eni.mac) {
        assert!(Instant::now() < end, "metadata never listed {}", eni.mac);
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = md.eni(&eni.mac).unwrap();
    assert_eq!(m.eni_id, eni.id);
    assert_eq!(m.primary_ip, eni.primary_ip);
    let mut want = vec![eni.primary_ip];
    want.extend(&eni.secondary_ips);
    want.sort();
    let mut got = m.private_ipv4s.clone();
    got.sort();
    assert_eq!(got, want);
    let e = metadata(&emu, "i-nope").instance_id().unwrap_err();
    assert_eq!(e.http_status, 404, "{e}");
}

#[test]
fn ram_role_and_file_credentials() {
    let emu = Emu::fast("cc-cred");
    capture_logs();
    let md = metadata(&emu, A);
    let ram = Arc::new(CredentialProvider::new(CredentialSource::RamRole, Some(md)));
    let c = ram.get().unwrap();
    assert!(c.security_token.is_some());
    let ecs = Ecs::new(config(&emu, 2), ram.clone()).unwrap();
    assert_eq!(ecs.describe_instance_types(&[]).unwrap().len(), 3);
    assert_eq!(ram.get().unwrap(), c, "cached until near expiry");
    // Debug output of what the provider holds shows no secret.
    let d = format!("{c:?} {ram:?}");
    assert!(!d.contains(&c.access_key_secret), "{d}");
    assert!(
        !d.contains(c.security_token.as_deref().unwrap_or("-")),
        "{d}"
    );

    let path = std::env::temp_dir().join(format!("terway-cc-cred-{}.json", std::process::id()));
    let doc = serde_json::json!({"AccessKeyId": KEY_ID, "AccessKeySecret": SECRET});
    std::fs::write(&path, doc.to_string()).unwrap();
    let file = Arc::new(CredentialProvider::new(
        CredentialSource::File(path.clone()),
        None,
    ));
    let ecs = Ecs::new(config(&emu, 2), file).unwrap();
    assert_eq!(
        ecs.describe_vswitches(&[VSW_A.to_string()]).unwrap().len(),
        1
    );
    // Rotated to a wrong key: the next call uses it, and the cloud says so.
    let doc =
        serde_json::json!({"AccessKeyId": "LTAI5tRotatedAwayKey0001", "AccessKeySecret": SECRET});
    std::fs::write(&path, doc.to_string()).unwrap();
    let e = ecs.describe_vswitches(&[VSW_A.to_string()]).unwrap_err();
    assert_eq!(e.code, "InvalidAccessKeyId.NotFound");
    let _ = std::fs::remove_file(&path);
    // No role metadata at all: a clear credentials error.
    let none = CredentialProvider::new(
        CredentialSource::RamRole,
        Some(Metadata::new(&format!(
            "http://{}/instances/i-nope",
            emu.addr
        ))),
    );
    assert!(none.get().is_err());
}

#[test]
fn wrong_keys_get_the_clouds_codes_without_retries_or_secrets() {
    let emu = Emu::fast("cc-key");
    capture_logs();
    let ecs = Ecs::new(
        config(&emu, 4),
        static_creds("LTAI5tNoSuchKey000000001", SECRET),
    )
    .unwrap();
    let e = ecs.describe_instance_types(&[]).unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.http_status),
        ("InvalidAccessKeyId.NotFound", 404)
    );
    assert!(!e.request_id.is_empty());
    assert_eq!(
        count(&ecs, "DescribeInstanceTypes"),
        1,
        "final errors are not retried"
    );

    let wrong = "wrong-secret-never-logged";
    let ecs = Ecs::new(config(&emu, 4), static_creds(KEY_ID, wrong)).unwrap();
    let e = ecs
        .create_eni(VSW_A, &sgs(), 1, &[], "", "tok-sig")
        .unwrap_err();
    assert_eq!(e.code, "SignatureDoesNotMatch");
    assert_eq!(e.action, "CreateNetworkInterface");
    let text = format!("{e} {e:?} {ecs:?}");
    assert!(!text.contains(wrong) && !text.contains(SECRET), "{text}");
    assert!(text.contains(&e.request_id));
}

#[test]
fn throttling_and_server_errors_are_retried() {
    let emu = Emu::fast("cc-retry");
    // Enough attempts that even the shortest jitter draws outlast the 1 s throttle window.
    let ecs = client(&emu, 10);
    emu.admin("DELETE", "/admin/calls", "");
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"rate_limits": {"DescribeInstanceTypes": 1}}"#,
    );
    for _ in 0..3 {
        ecs.describe_instance_types(&[]).unwrap();
    }
    let calls = emu.admin("GET", "/admin/calls", "");
    let throttled = calls["DescribeInstanceTypes"]["errors"]["Throttling.User"]
        .as_u64()
        .unwrap_or(0);
    assert!(throttled >= 1, "{calls}");
    assert_eq!(calls["DescribeInstanceTypes"]["ok"], 3);
    assert_eq!(count(&ecs, "DescribeInstanceTypes"), 3 + throttled);

    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"error_rate": 0.5, "error_actions": ["DescribeVSwitches"]}"#,
    );
    for _ in 0..8 {
        ecs.describe_vswitches(&[VSW_A.to_string()]).unwrap();
    }
    let calls = emu.admin("GET", "/admin/calls", "");
    let errs = &calls["DescribeVSwitches"]["errors"];
    let n = errs["InternalError"].as_u64().unwrap_or(0)
        + errs["ServiceUnavailable"].as_u64().unwrap_or(0);
    assert!(n >= 1, "{calls}");
    assert_eq!(calls["DescribeVSwitches"]["ok"], 8);
}

/// `Operation.Conflict` (HTTP 403: another operation on the resource is under way) is retried
/// in place, and the retried call does its work once.
#[test]
fn operation_conflict_is_retried_in_place() {
    let emu = Emu::fast("cc-conflict");
    let ecs = client(&emu, 10);
    let eni = ecs.create_eni(VSW_A, &sgs(), 0, &[], "", "tok-c").unwrap();
    emu.admin("DELETE", "/admin/calls", "");
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"conflict_rate": 0.5, "error_actions": ["AssignPrivateIpAddresses", "UnassignPrivateIpAddresses"]}"#,
    );
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(ecs.assign_ips(&eni.id, 2).unwrap());
    }
    assert_eq!(got.len(), 12);
    ecs.unassign_ips(&eni.id, &got[..10]).unwrap();
    let calls = emu.admin("GET", "/admin/calls", "");
    let conflicts = |a: &str| {
        calls[a]["errors"]["Operation.Conflict"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        conflicts("AssignPrivateIpAddresses") + conflicts("UnassignPrivateIpAddresses") >= 1,
        "{calls}"
    );
    assert_eq!(calls["AssignPrivateIpAddresses"]["ok"], 6, "{calls}");
    assert_eq!(
        count(&ecs, "AssignPrivateIpAddresses"),
        6 + conflicts("AssignPrivateIpAddresses")
    );
    emu.admin("PUT", "/admin/faults", "{}");
    let now = ecs
        .wait_eni_status(&eni.id, "Available", Duration::from_secs(1))
        .unwrap();
    assert_eq!(now.secondary_ips, got[10..].to_vec());
    // When every attempt conflicts, the caller hears it as "try again".
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"conflict_rate": 1.0, "error_actions": ["AssignPrivateIpAddresses"]}"#,
    );
    let few = client(&emu, 2);
    let e = few.assign_ips(&eni.id, 1).unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.http_status),
        ("Operation.Conflict", 403)
    );
    assert_eq!(count(&few, "AssignPrivateIpAddresses"), 2);
    assert_eq!(terway::Error::from(e).kind, terway::Kind::TryAgain);
}

#[test]
fn final_errors_carry_code_message_and_request_id() {
    let emu = Emu::fast("cc-final");
    let ecs = client(&emu, 3);
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"error_rate": 1.0, "error_actions": ["DescribeVSwitches"]}"#,
    );
    let e = ecs.describe_vswitches(&[VSW_A.to_string()]).unwrap_err();
    assert!(
        ["InternalError", "ServiceUnavailable"].contains(&e.code.as_str()),
        "{e}"
    );
    assert!(e.http_status >= 500 && !e.message.is_empty() && !e.request_id.is_empty());
    assert_eq!(count(&ecs, "DescribeVSwitches"), 3, "max_attempts");
    assert!(e.to_string().starts_with("DescribeVSwitches: "), "{e}");
    let err: terway::Error = e.into();
    assert_eq!(err.kind, terway::Kind::TryAgain);

    // Exhaustion names the vSwitch, as the cloud does, and is not retried.
    emu.admin(
        "PUT",
        "/admin/faults",
        &format!(r#"{{"vswitch_free_cap": {{"{VSW_B}": 0}}}}"#),
    );
    let e = ecs
        .create_eni(VSW_B, &sgs(), 0, &[], "", "tok-x")
        .unwrap_err();
    assert!(e.is_vswitch_exhausted(), "{e}");
    assert!(e.message.contains(VSW_B), "{e}");
    assert_eq!(count(&ecs, "CreateNetworkInterface"), 1);
    let e = ecs.attach_eni(A, "eni-nope").unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn timeouts_bound_every_call() {
    capture_logs();
    // Accepts connections (the kernel does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = CloudConfig {
        region_id: REGION.into(),
        ecs_endpoint: format!("http://{addr}"),
        vpc_endpoint: format!("http://{addr}"),
        retry: fast_retry(2),
        rate_limits: vec![],
    };
    let http = HttpConfig {
        connect_timeout: Duration::from_millis(300),
        timeout: Duration::from_millis(400),
    };
    let ecs = Ecs::with_http(cfg, static_creds(KEY_ID, SECRET), http).unwrap();
    let t = Instant::now();
    let e: CloudError = ecs.describe_instance_types(&[]).unwrap_err();
    assert_eq!((e.code.as_str(), e.http_status), ("Transport", 0), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(count(&ecs, "DescribeInstanceTypes"), 2);
    let md = Metadata::with_http(&format!("http://{addr}"), &http);
    let t = Instant::now();
    assert_eq!(md.instance_id().unwrap_err().code, "Transport");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(silent);
}

/// Runs last by name order within most harnesses, but checks whatever was logged so far, and
/// makes its own secret-bearing calls first.
#[test]
fn zz_no_secret_in_logs() {
    let emu = Emu::fast("cc-logs");
    capture_logs();
    let md = metadata(&emu, A);
    let ram = Arc::new(CredentialProvider::new(
        CredentialSource::RamRole,
        Some(md.clone()),
    ));
    let c = ram.get().unwrap();
    let ecs = Ecs::new(config(&emu, 3), ram).unwrap();
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"error_rate": 1.0, "error_actions": ["DescribeVSwitches"]}"#,
    );
    let _ = ecs.describe_vswitches(&[]);
    ecs.describe_instance_types(&[]).unwrap();
    md.set_session_token("stale-token-value");
    md.instance_id().unwrap();
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        logs.contains("DescribeVSwitches"),
        "retries are logged:\n{logs}"
    );
    for secret in [
        SECRET,
        "wrong-secret-never-logged",
        c.access_key_secret.as_str(),
        c.security_token.as_deref().unwrap_or("-"),
    ] {
        assert!(!logs.contains(secret), "secret {secret:?} in logs:\n{logs}");
    }
}
