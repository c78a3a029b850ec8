//! The registry and its text: every family present with its HELP and TYPE, values as recorded,
//! per-ENI series following the ENIs, free-form labels bounded.

use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

fn value(text: &str, series: &str) -> f64 {
    let l = line(text, &format!("{series} ")).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    l.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn every_family_has_help_and_type() {
    let m = Metrics::new();
    m.set_info("VPC");
    m.rpc("alloc", None, Duration::from_millis(3));
    m.openapi(
        "DescribeNetworkInterfaces",
        None,
        false,
        Duration::from_millis(1),
    );
    m.metadata("meta-data/instance-id", false, Duration::from_millis(1));
    m.set_pool(&PoolSnapshot {
        enis: Some(vec![EniSnapshot::default()]),
        ..PoolSnapshot::default()
    });
    m.waited(outcome::SERVED, Duration::from_millis(20));
    m.state_save.observe(0.001);
    let text = m.encode();
    for (name, kind) in [
        ("terway_rpc_latency", "histogram"),
        ("aliyun_openapi_latency", "histogram"),
        ("aliyun_openapi_calls_total", "counter"),
        ("aliyun_metadata_latency", "histogram"),
        ("terway_daemon_info", "gauge"),
        ("terway_resource_pool_total_count", "gauge"),
        ("terway_resource_pool_idle_count", "gauge"),
        ("terway_resource_pool_capacity", "gauge"),
        ("terway_resource_pool_min_idle", "gauge"),
        ("terway_resource_pool_max_idle", "gauge"),
        ("terway_eniip_factory_eni_count", "gauge"),
        ("terway_eniip_factory_ip_count", "gauge"),
        ("terway_eni_ips_in_use", "gauge"),
        ("terway_pods_waiting", "gauge"),
        ("terway_pod_wait_seconds", "histogram"),
        ("terway_allocation_failures_total", "counter"),
        ("terway_reconcile_findings_total", "counter"),
        ("terway_state_save_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing in\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    // Known label values exist before anything happened.
    for r in reason::ALL {
        assert_eq!(
            value(
                &text,
                &format!("terway_allocation_failures_total{{reason=\"{r}\"}}")
            ),
            0.0
        );
    }
}

#[test]
fn values_are_what_was_recorded() {
    let m = Metrics::new();
    m.rpc("alloc", None, Duration::from_millis(3));
    m.rpc(
        "alloc",
        Some(crate::Kind::TryAgain),
        Duration::from_millis(40),
    );
    m.openapi(
        "AssignPrivateIpAddresses",
        None,
        false,
        Duration::from_millis(2),
    );
    m.openapi(
        "AssignPrivateIpAddresses",
        Some("Throttling.User"),
        true,
        Duration::from_millis(2),
    );
    m.openapi(
        "CreateNetworkInterface",
        Some("InvalidVSwitchId.IpNotEnough"),
        false,
        Duration::from_millis(2),
    );
    m.failed_allocation(reason::VSWITCH_EXHAUSTED);
    m.findings(finding::ADOPTED, 3);
    m.findings(finding::LOST, 0);
    let t = m.encode();
    assert_eq!(
        value(
            &t,
            r#"terway_rpc_latency_count{error="false",result="ok",rpc_api="alloc"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"terway_rpc_latency_bucket{error="false",result="ok",rpc_api="alloc",le="4"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"terway_rpc_latency_sum{error="true",result="TryAgain",rpc_api="alloc"}"#
        ),
        40.0
    );
    assert_eq!(
        value(
            &t,
            r#"aliyun_openapi_calls_total{api="AssignPrivateIpAddresses"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &t,
            r#"aliyun_openapi_throttles_total{api="AssignPrivateIpAddresses"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            r#"aliyun_openapi_errors_total{api="CreateNetworkInterface",code="InvalidVSwitchId.IpNotEnough"}"#
        ),
        1.0
    );
    assert!(
        line(
            &t,
            r#"aliyun_openapi_throttles_total{api="CreateNetworkInterface"}"#
        )
        .is_none()
    );
    assert_eq!(
        value(
            &t,
            r#"terway_allocation_failures_total{reason="vswitch_exhausted"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&t, r#"terway_reconcile_findings_total{finding="adopted"}"#),
        3.0
    );
    assert_eq!(
        value(&t, r#"terway_reconcile_findings_total{finding="lost"}"#),
        0.0
    );
}

#[test]
fn per_eni_series_follow_the_enis() {
    let m = Metrics::new();
    let eni = |id: &str, n| EniSnapshot {
        id: id.into(),
        mac: format!("00:16:3e:00:00:0{}", &id[4..]),
        addresses: n,
        in_use: n - 1,
    };
    m.set_pool(&PoolSnapshot {
        in_use: 5,
        idle: 2,
        capacity: 210,
        min_idle: 0,
        max_idle: 5,
        enis: Some(vec![eni("eni-1", 4), eni("eni-2", 3)]),
    });
    let t = m.encode();
    assert_eq!(value(&t, "terway_resource_pool_total_count"), 7.0);
    assert_eq!(value(&t, "terway_resource_pool_idle_count"), 2.0);
    assert_eq!(value(&t, "terway_resource_pool_capacity"), 210.0);
    assert_eq!(value(&t, "terway_eniip_factory_eni_count"), 2.0);
    assert_eq!(
        value(
            &t,
            r#"terway_eniip_factory_ip_count{eni="eni-2",mac="00:16:3e:00:00:02"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &t,
            r#"terway_eni_ips_in_use{eni="eni-1",mac="00:16:3e:00:00:01"}"#
        ),
        3.0
    );
    m.set_pool(&PoolSnapshot {
        enis: Some(vec![eni("eni-2", 1)]),
        ..PoolSnapshot::default()
    });
    let t = m.encode();
    assert!(!t.contains("eni-1"), "{t}");
    assert_eq!(value(&t, "terway_eniip_factory_eni_count"), 1.0);
}

#[test]
fn metadata_paths_become_small_labels() {
    assert_eq!(
        metadata_url("meta-data/network/interfaces/macs/00:16:3e:0a:0b:0c/private-ipv4s"),
        "meta-data/network/interfaces/macs/<mac>/private-ipv4s"
    );
    assert_eq!(
        metadata_url("meta-data/ram/security-credentials/my-role"),
        "meta-data/ram/security-credentials/<role>"
    );
    assert_eq!(metadata_url("/api/token"), "api/token");
    assert_eq!(
        metadata_url("meta-data/network/interfaces/macs/"),
        "meta-data/network/interfaces/macs"
    );
}

#[test]
fn free_form_labels_are_bounded() {
    let m = Metrics::new();
    for i in 0..(MAX_FREE_LABELS + 20) {
        m.openapi("X", Some(&format!("Code{i}")), false, Duration::ZERO);
    }
    m.openapi("X", Some("Code\n\"quoted\""), false, Duration::ZERO);
    let t = m.encode();
    let codes = t
        .lines()
        .filter(|l| l.starts_with("aliyun_openapi_errors_total{"))
        .count();
    assert_eq!(codes, MAX_FREE_LABELS + 1, "the first ones and `other`");
    assert_eq!(
        value(&t, r#"aliyun_openapi_errors_total{api="X",code="other"}"#),
        21.0
    );
}
