//! The cloud client's IPv6 side against the real `terway emulate` binary over loopback: ENIs
//! created with IPv6, AssignIpv6Addresses/UnassignIpv6Addresses in batches with quotas and the
//! cloud's codes, vSwitch IPv6 CIDRs, and the metadata `ipv6s` (bracketed, 404 without IPv6),
//! `ipv6-gateway` and `vswitch-ipv6-cidr-block` paths.

mod emulate_support;

use emulate_support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway::cloud::{
    CloudConfig, CredentialProvider, CredentialSource, Ecs, EniFilter, Metadata, RetryPolicy, codes,
};

fn client(emu: &Emu) -> Ecs {
    let cfg = CloudConfig {
        region_id: REGION.into(),
        ecs_endpoint: format!("http://{}", emu.addr),
        vpc_endpoint: format!("http://{}/", emu.addr),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(40),
            max_delay: Duration::from_millis(400),
            ..RetryPolicy::default()
        },
        rate_limits: vec![],
    };
    let creds = Arc::new(CredentialProvider::new(
        CredentialSource::Static {
            access_key: KEY_ID.into(),
            access_secret: SECRET.into(),
        },
        None,
    ));
    Ecs::new(cfg, creds).unwrap()
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

/// The default region, but vSwitch B without IPv6.
fn emulator(tag: &str) -> Emu {
    let cfg = fast_config(tag, 200, 300);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["vswitches"][1]
        .as_object_mut()
        .unwrap()
        .remove("ipv6_cidr");
    std::fs::write(&cfg, v.to_string()).unwrap();
    Emu::start(&["--config", cfg.to_str().unwrap()])
}

fn ipv6_of(ecs: &Ecs, eni: &str) -> Vec<Ipv6Addr> {
    let f = EniFilter {
        eni_ids: vec![eni.to_string()],
        ..EniFilter::default()
    };
    let mut v = ecs.describe_enis(&f).unwrap().remove(0).ipv6;
    v.sort();
    v
}

#[test]
fn ipv6_addresses_in_batches_with_quotas_and_codes() {
    let emu = emulator("v6-api");
    let ecs = client(&emu);
    let vsw = ecs
        .describe_vswitches(&[VSW_A.to_string(), VSW_B.to_string()])
        .unwrap();
    let a_cidr: ipnetwork::Ipv6Network = "2408:4005:3c4:a00::/64".parse().unwrap();
    assert_eq!(vsw[0].ipv6_cidr, Some(a_cidr));
    assert_eq!(vsw[1].ipv6_cidr, None, "vSwitch B has no IPv6");

    let eni = ecs
        .create_eni_dual(VSW_A, &sgs(), 1, 2, &[], "", "tok-v6")
        .unwrap();
    assert_eq!((eni.secondary_ips.len(), eni.ipv6.len()), (1, 2));
    assert!(eni.ipv6.iter().all(|ip| a_cidr.contains(*ip)), "{eni:?}");
    let again = ecs
        .create_eni_dual(VSW_A, &sgs(), 1, 2, &[], "", "tok-v6")
        .unwrap();
    assert_eq!(
        again.ipv6, eni.ipv6,
        "the ClientToken replays the first answer"
    );
    // An IPv4-only ENI has no IPv6.
    assert!(
        ecs.create_eni(VSW_A, &sgs(), 0, &[], "", "")
            .unwrap()
            .ipv6
            .is_empty()
    );
    let e = ecs
        .create_eni_dual(VSW_B, &sgs(), 0, 1, &[], "", "")
        .unwrap_err();
    assert_eq!(e.code, codes::VSWITCH_IPV6_NOT_ENABLED, "{e}");
    assert!(codes::is_final(&e.code));

    ecs.attach_eni(A, &eni.id).unwrap();
    ecs.wait_eni_status(&eni.id, "InUse", Duration::from_secs(10))
        .unwrap();
    // 12 addresses: one call of 10 and one of 2.
    let got = ecs.assign_ipv6(&eni.id, 12).unwrap();
    assert_eq!(got.len(), 12);
    assert_eq!(count(&ecs, "AssignIpv6Addresses"), 2);
    assert_eq!(ipv6_of(&ecs, &eni.id).len(), 14);
    // ecs.g7.4xlarge takes 30 per ENI: 20 more stop after the first 10, which are kept.
    let partial = ecs.assign_ipv6(&eni.id, 20).unwrap();
    assert_eq!(partial.len(), 10);
    assert_eq!(ipv6_of(&ecs, &eni.id).len(), 24);
    let e = ecs.assign_ipv6(&eni.id, 7).unwrap_err();
    assert_eq!(e.code, codes::IPV6_COUNT_EXCEEDED, "{e}");
    assert!(codes::is_eni_full(&e.code));

    // Unassign in chunks of 10; one already gone does not fail the rest.
    ecs.unassign_ipv6(&eni.id, &got[..1]).unwrap();
    ecs.unassign_ipv6(&eni.id, &got).unwrap();
    let left = ipv6_of(&ecs, &eni.id);
    assert_eq!(left.len(), 12);
    assert!(got.iter().all(|ip| !left.contains(ip)));
    assert!(ecs.assign_ipv6(&eni.id, 0).unwrap().is_empty());
}

#[test]
fn metadata_ipv6_paths() {
    let emu = emulator("v6-meta");
    let ecs = client(&emu);
    let md = Metadata::new(&format!("http://{}/instances/{A}", emu.addr));
    let mac = md.primary_mac().unwrap();
    let primary = md.eni_ipv6(&mac).unwrap();
    assert_eq!(
        primary.ips.len(),
        1,
        "the instance's IPv6 on its primary ENI"
    );
    assert_eq!(
        primary.gateway,
        Some("2408:4005:3c4:a00:ffff:ffff:ffff:fffd".parse().unwrap())
    );
    assert_eq!(
        primary.vswitch_cidr,
        Some("2408:4005:3c4:a00::/64".parse().unwrap())
    );
    let (status, text) = emu.meta(A, &format!("network/interfaces/macs/{mac}/ipv6s"));
    assert_eq!((status, text), (200, format!("[{}]", primary.ips[0])));

    let dual = ecs
        .create_eni_dual(VSW_A, &sgs(), 0, 3, &[], "", "")
        .unwrap();
    let plain = ecs.create_eni(VSW_A, &sgs(), 0, &[], "", "").unwrap();
    let on_b = ecs.create_eni(VSW_B, &sgs(), 0, &[], "", "").unwrap();
    for e in [&dual, &plain, &on_b] {
        ecs.attach_eni(A, &e.id).unwrap();
        ecs.wait_eni_status(&e.id, "InUse", Duration::from_secs(10))
            .unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    while md.macs().unwrap().len() < 4 {
        assert!(Instant::now() < end, "metadata never listed the ENIs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got = md.ipv6s(&dual.mac).unwrap();
    got.sort();
    let mut want = dual.ipv6.clone();
    want.sort();
    assert_eq!(got, want);
    // No IPv6 on the ENI: the service answers 404, the client says "none".
    assert_eq!(
        emu.meta(A, &format!("network/interfaces/macs/{}/ipv6s", plain.mac))
            .0,
        404
    );
    assert!(md.ipv6s(&plain.mac).unwrap().is_empty());
    assert!(md.ipv6_gateway(&plain.mac).unwrap().is_some());
    // No IPv6 on the vSwitch: no gateway and no CIDR either.
    let b = md.eni_ipv6(&on_b.mac).unwrap();
    assert_eq!((b.ips.len(), b.gateway, b.vswitch_cidr), (0, None, None));
}

/// A metadata service that answers every GET of `path` with `status` and `body` (and has no
/// token endpoint), for answers the emulator never gives.
fn fake_metadata(status: u16, body: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (code, text) = if first.starts_with("PUT") {
                (405, "")
            } else {
                (status, body)
            };
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn metadata_ipv6_garbage_is_an_error_naming_the_path() {
    for body in [
        "[\"2408::1\"]",
        "2408::1",
        "[2408::1,nope]",
        "<html>oops</html>",
    ] {
        let md = Metadata::new(&fake_metadata(200, body));
        let e = md.ipv6s("00:16:3e:00:00:01").unwrap_err();
        assert_eq!(e.code, "Decode", "{body}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("network/interfaces/macs/00:16:3e:00:00:01/ipv6s"),
            "{text}"
        );
    }
    let md = Metadata::new(&fake_metadata(200, "[2408::1, 2408::2]\n"));
    assert_eq!(md.ipv6s("m").unwrap().len(), 2);
    let e = md.ipv6_gateway("m").unwrap_err();
    assert!(e.to_string().contains("ipv6-gateway"), "{e}");
    let e = md.vswitch_ipv6_cidr("m").unwrap_err();
    assert!(e.to_string().contains("vswitch-ipv6-cidr-block"), "{e}");
    // Only 404 means "no IPv6": a server error stays an error.
    let md = Metadata::new(&fake_metadata(500, "boom"));
    assert_eq!(md.ipv6s("m").unwrap_err().http_status, 500);
    let md = Metadata::new(&fake_metadata(404, "Not Found"));
    assert!(md.ipv6s("m").unwrap().is_empty());
}
