//! `terway emulate` end to end over loopback HTTP: the real binary, signed requests.

mod emulate_support;

use emulate_support::*;
use serde_json::Value;
use std::process::Command;
use terway::cloud::sign;

fn ips_of(eni: &Value) -> Vec<String> {
    eni["PrivateIpSets"]["PrivateIpSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["PrivateIpAddress"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn print_config_and_banner_and_node_configs() {
    let out = Command::new(bin())
        .args(["emulate", "--print-config"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["instance_types"][0]["eni_quantity"], 8);
    let dir = std::env::temp_dir().join(format!("terway-emu-nodes-{}", std::process::id()));
    let emu = Emu::start(&["--node-configs", dir.to_str().unwrap()]);
    assert!(
        emu.banner.iter().any(|l| l.contains(KEY_ID)),
        "{:?}",
        emu.banner
    );
    assert!(
        !emu.banner.iter().any(|l| l.contains(SECRET)),
        "secret printed"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{A}.json"))).unwrap())
            .unwrap();
    assert_eq!(cfg["ecs_endpoint"], format!("http://{}", emu.addr));
    assert_eq!(
        cfg["metadata_endpoint"],
        format!("http://{}/instances/{A}", emu.addr)
    );
    assert_eq!(cfg["access_key"], KEY_ID);
    assert_eq!(cfg["vswitches"]["cn-hangzhou-k"][0], VSW_A);
    assert!(cfg["socket_path"].as_str().unwrap().contains(A));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn signatures_v3_v2_and_their_errors() {
    let emu = Emu::fast("sig");
    let v = emu.ok(
        "DescribeInstanceTypes",
        &[("InstanceTypes.1", "ecs.g7.4xlarge")],
    );
    let t = &v["InstanceTypes"]["InstanceType"][0];
    assert_eq!(
        (
            t["EniQuantity"].as_u64(),
            t["EniPrivateIpAddressQuantity"].as_u64()
        ),
        (Some(8), Some(30))
    );
    assert_eq!(t["EniTrunkSupported"], true);
    // V2, GET query and POST form.
    let (s, v) = emu.call_v2(
        SECRET,
        &[("Action", "DescribeInstanceTypes")],
        false,
        |_| {},
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = emu.call_v2(
        SECRET,
        &[("Action", "DescribeVSwitches"), ("Version", VPC)],
        true,
        |_| {},
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["VSwitches"]["VSwitch"].as_array().unwrap().len(), 2);
    assert_eq!(
        emu.admin("GET", "/admin/calls", "")["DescribeVSwitches"]["ok"],
        1,
        "audited by action, even from a form body"
    );
    // Wrong secret, tampered parameter, unknown key.
    let (s, v) = emu.call_v2(
        "wrong",
        &[("Action", "DescribeInstanceTypes")],
        false,
        |_| {},
    );
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (400, "SignatureDoesNotMatch"),
        "{v}"
    );
    assert!(
        v["Message"]
            .as_str()
            .unwrap()
            .contains("server string to sign is:GET&%2F&")
    );
    let (s, v) = emu.call_v2(SECRET, &[("Action", "DescribeInstanceTypes")], false, |q| {
        q.push(("InstanceTypes.1".into(), "ecs.g7.large".into()))
    });
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (400, "SignatureDoesNotMatch")
    );
    let (s, v) = emu.call_as("LTAInope", SECRET, None, "DescribeInstanceTypes", ECS, &[]);
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (404, "InvalidAccessKeyId.NotFound")
    );
    let (s, v) = emu.call_as(KEY_ID, "wrong", None, "DescribeInstanceTypes", ECS, &[]);
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (400, "SignatureDoesNotMatch")
    );
    // Expired timestamp and reused nonce (V2 lets us pick them).
    let (s, v) = emu.call_v2(
        SECRET,
        &[
            ("Action", "DescribeInstanceTypes"),
            ("Timestamp", "2020-01-01T00:00:00Z"),
        ],
        false,
        |_| {},
    );
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (400, "InvalidTimeStamp.Expired"),
        "{v}"
    );
    let n = nonce();
    let (s, _) = emu.call_v2(
        SECRET,
        &[("Action", "DescribeInstanceTypes"), ("SignatureNonce", &n)],
        false,
        |_| {},
    );
    assert_eq!(s, 200);
    let (s, v) = emu.call_v2(
        SECRET,
        &[("Action", "DescribeInstanceTypes"), ("SignatureNonce", &n)],
        false,
        |_| {},
    );
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (400, "SignatureNonceUsed")
    );
    // Malformed V3 Authorization header.
    let (s, b) = emu.raw(
        "POST",
        "/?RegionId=cn-hangzhou",
        &[
            ("authorization", "ACS3-HMAC-SHA256 nonsense"),
            ("x-acs-action", "DescribeInstanceTypes"),
            ("x-acs-version", ECS),
        ],
        b"",
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("IncompleteSignature"), "{b}");
    // No signature at all.
    let (s, b) = emu.raw(
        "GET",
        "/?Action=DescribeInstanceTypes&Version=2014-05-26&RegionId=cn-hangzhou",
        &[],
        b"",
    );
    assert_eq!(s, 400);
    assert!(b.contains("MissingParameter"), "{b}");
}

#[test]
fn bad_requests_get_real_codes_and_never_kill_the_server() {
    let emu = Emu::fast("bad");
    emu.err(
        "CreateNetworkInterface",
        &[("SecurityGroupIds.1", SG)],
        400,
        "MissingParameter",
    );
    let v = emu.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", VSW_A),
            ("SecurityGroupIds.1", SG),
            ("SecondaryPrivateIpAddressCount", "two"),
        ],
        400,
        "InvalidParameter",
    );
    assert_eq!(
        v["Message"],
        "The specified parameter \"SecondaryPrivateIpAddressCount\" is not valid."
    );
    emu.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", VSW_A),
            ("SecurityGroupIds.1", SG),
            ("SecondaryPrivateIpAddressCount", "99999999999999999999999"),
        ],
        400,
        "InvalidParameter",
    );
    emu.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", "eni-x"),
            ("SecondaryPrivateIpAddressCount", "-1"),
        ],
        400,
        "InvalidParameter",
    );
    emu.err(
        "DescribeNetworkInterfaces",
        &[("NetworkInterfaceId.0", "eni-x")],
        400,
        "InvalidParameter",
    );
    emu.err(
        "DescribeNetworkInterfaces",
        &[("NextToken", "not-a-token")],
        400,
        "InvalidParameter",
    );
    emu.err(
        "DescribeNetworkInterfaces",
        &[("RegionId", "cn-nowhere")],
        404,
        "InvalidRegionId.NotFound",
    );
    let (s, v) = emu.call_as(KEY_ID, SECRET, None, "RunInstances", ECS, &[]);
    assert_eq!(
        (s, v["Code"].as_str().unwrap()),
        (404, "InvalidAction.NotFound")
    );
    let (s, v) = emu.call_as(KEY_ID, SECRET, None, "DescribeVSwitches", ECS, &[]);
    assert_eq!((s, v["Code"].as_str().unwrap()), (400, "InvalidVersion"));
    // Oversized body: refused without buffering it all.
    let big = vec![b'a'; 1 << 20];
    let (s, b) = emu.raw(
        "POST",
        "/",
        &[("content-type", "application/x-www-form-urlencoded")],
        &big,
    );
    assert_eq!(s, 413, "{b}");
    assert!(b.contains("RequestEntityTooLarge"));
    let (s, b) = emu.raw("GET", "/?Action=%ZZ", &[], b"");
    assert_eq!(s, 400, "{b}");
    let (s, _) = emu.raw("GET", "/somewhere", &[], b"");
    assert_eq!(s, 404);
    // Junk on the wire.
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(&emu.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        std::io::Write::write_all(&mut s, junk).unwrap();
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    }
    let (s, b) = emu.raw("GET", "/?Action=DescribeInstanceTypes&Version=2014-05-26&RegionId=cn-hangzhou&AccessKeyId=x&Signature=y&SignatureMethod=HMAC-SHA256&SignatureVersion=1.0&SignatureNonce=1&Timestamp=2020", &[], b"");
    assert_eq!(s, 400, "{b}");
    // Clients that stall mid-body (more of them than acceptor threads) hang nobody else.
    let stalled: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&emu.addr).unwrap();
            let req = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nAction=";
            std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    emu.ok("DescribeInstanceTypes", &[]);
    drop(stalled);
    assert_eq!(emu.raw("GET", "/admin/health", &[], b"").1, "ok");
}

#[test]
fn eni_lifecycle_async_attach_and_lagging_metadata() {
    let emu = Emu::fast("life");
    let v = emu.ok(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", VSW_A),
            ("SecurityGroupIds.1", SG),
            ("SecondaryPrivateIpAddressCount", "2"),
            ("Ipv6AddressCount", "1"),
            ("Tag.1.Key", "creator"),
            ("Tag.1.Value", "terway"),
            ("Description", "pool"),
        ],
    );
    let id = v["NetworkInterfaceId"].as_str().unwrap().to_string();
    assert!(id.starts_with("eni-"));
    assert_eq!(v["Status"], "Available");
    assert_eq!(v["Type"], "Secondary");
    assert_eq!(v["VSwitchId"], VSW_A);
    assert_eq!(v["ZoneId"], "cn-hangzhou-k");
    assert!(v["MacAddress"].as_str().unwrap().starts_with("00:16:3e:"));
    assert_eq!(
        v["PrivateIpSets"]["PrivateIpSet"].as_array().unwrap().len(),
        3
    );
    assert_eq!(v["PrivateIpSets"]["PrivateIpSet"][0]["Primary"], true);
    assert_eq!(v["Ipv6Sets"]["Ipv6Set"].as_array().unwrap().len(), 1);
    assert_eq!(v["Tags"]["Tag"][0]["TagKey"], "creator");
    let mac = v["MacAddress"].as_str().unwrap().to_string();

    emu.ok(
        "AttachNetworkInterface",
        &[("InstanceId", A), ("NetworkInterfaceId", &id)],
    );
    assert_eq!(emu.eni(&id)["Status"], "Attaching");
    emu.wait_until(10, "InUse", || emu.eni(&id)["Status"] == "InUse");
    let e = emu.eni(&id);
    assert_eq!(e["InstanceId"], A);
    assert_eq!(e["Attachment"]["InstanceId"], A);
    // Metadata lags the API: poll until the MAC shows up, with its addresses.
    emu.wait_until(10, "metadata MAC", || {
        emu.meta(A, "network/interfaces/macs/").1.contains(&mac)
    });
    let base = format!("network/interfaces/macs/{mac}/");
    assert_eq!(emu.meta(A, &format!("{base}network-interface-id")).1, id);
    assert_eq!(emu.meta(A, &format!("{base}gateway")).1, "172.16.0.253");
    let ips: Vec<String> =
        serde_json::from_str(&emu.meta(A, &format!("{base}private-ipv4s")).1).unwrap();
    assert_eq!(ips, ips_of(&e));

    let v = emu.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &id),
            ("SecondaryPrivateIpAddressCount", "2"),
        ],
    );
    let got: Vec<String> = serde_json::from_value(
        v["AssignedPrivateIpAddressesSet"]["PrivateIpSet"]["PrivateIpAddress"].clone(),
    )
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        v["AssignedPrivateIpAddressesSet"]["NetworkInterfaceId"],
        id.as_str()
    );
    assert_eq!(ips_of(&emu.eni(&id)).len(), 5);
    emu.wait_until(10, "metadata IPs", || {
        emu.meta(A, &format!("{base}private-ipv4s"))
            .1
            .contains(&got[1])
    });
    emu.ok(
        "UnassignPrivateIpAddresses",
        &[("NetworkInterfaceId", &id), ("PrivateIpAddress.1", &got[0])],
    );
    emu.err(
        "UnassignPrivateIpAddresses",
        &[("NetworkInterfaceId", &id), ("PrivateIpAddress.1", &got[0])],
        403,
        "InvalidIp.IpUnassigned",
    );
    emu.err(
        "UnassignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &id),
            ("PrivateIpAddress.1", "not-an-ip"),
        ],
        400,
        "InvalidParameter",
    );
    let v = emu.ok(
        "AssignIpv6Addresses",
        &[("NetworkInterfaceId", &id), ("Ipv6AddressCount", "1")],
    );
    let v6 = v["Ipv6Sets"]["Ipv6Address"][0]
        .as_str()
        .unwrap()
        .to_string();
    emu.ok(
        "UnassignIpv6Addresses",
        &[("NetworkInterfaceId", &id), ("Ipv6Address.1", &v6)],
    );

    emu.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &id)],
        400,
        "InvalidOperation.InvalidEniState",
    );
    emu.ok(
        "DetachNetworkInterface",
        &[("InstanceId", A), ("NetworkInterfaceId", &id)],
    );
    assert_eq!(emu.eni(&id)["Status"], "Detaching");
    emu.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &id)],
        400,
        "InvalidOperation.InvalidEniState",
    );
    emu.wait_until(10, "Available", || emu.eni(&id)["Status"] == "Available");
    emu.wait_until(10, "metadata MAC gone", || {
        !emu.meta(A, "network/interfaces/macs/").1.contains(&mac)
    });
    // Asynchronous: `Deleting` (a repeated delete is accepted, an attach is not), then gone.
    let free = |emu: &Emu| {
        emu.ok("DescribeVSwitches", &[("VSwitchId", VSW_A)])["VSwitches"]["VSwitch"][0]
            ["AvailableIpAddressCount"]
            .as_u64()
            .unwrap()
    };
    let before = free(&emu);
    emu.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &id)]);
    assert_eq!(emu.eni(&id)["Status"], "Deleting");
    emu.ok("DeleteNetworkInterface", &[("NetworkInterfaceId", &id)]);
    emu.err(
        "AttachNetworkInterface",
        &[("InstanceId", A), ("NetworkInterfaceId", &id)],
        400,
        "InvalidOperation.InvalidEniState",
    );
    let deleting = emu.ok("DescribeNetworkInterfaces", &[("Status", "Deleting")]);
    assert_eq!(deleting["TotalCount"], 1);
    emu.wait_until(10, "deleted", || {
        emu.ok(
            "DescribeNetworkInterfaces",
            &[("NetworkInterfaceId.1", &id)],
        )["TotalCount"]
            == 0
    });
    assert!(
        free(&emu) > before,
        "its addresses went back to the vSwitch"
    );
    emu.err(
        "DeleteNetworkInterface",
        &[("NetworkInterfaceId", &id)],
        404,
        "InvalidEniId.NotFound",
    );
    emu.err(
        "AttachNetworkInterface",
        &[("InstanceId", A), ("NetworkInterfaceId", &id)],
        404,
        "InvalidEniId.NotFound",
    );
    let primary = emu.ok(
        "DescribeNetworkInterfaces",
        &[("InstanceId", A), ("Type", "Primary")],
    );
    let pid = primary["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]["NetworkInterfaceId"]
        .as_str()
        .unwrap()
        .to_string();
    emu.err(
        "DetachNetworkInterface",
        &[("InstanceId", A), ("NetworkInterfaceId", &pid)],
        403,
        "InvalidOperation.DetachPrimaryEniNotAllowed",
    );
    emu.err(
        "AttachNetworkInterface",
        &[("InstanceId", "i-nope"), ("NetworkInterfaceId", &pid)],
        404,
        "InvalidEcsId.NotFound",
    );
}

#[test]
fn quotas_and_exhaustion() {
    let emu = Emu::fast("quota");
    // ecs.g7.large: 3 ENIs (primary included), 6 addresses per ENI.
    let e1 = emu.create_eni(VSW_A, "1");
    let e2 = emu.create_eni(VSW_A, "1");
    let e3 = emu.create_eni(VSW_A, "1");
    emu.attach_and_wait(B, &e1);
    emu.ok(
        "AttachNetworkInterface",
        &[("InstanceId", B), ("NetworkInterfaceId", &e2)],
    );
    emu.err(
        "AttachNetworkInterface",
        &[("InstanceId", B), ("NetworkInterfaceId", &e3)],
        403,
        "EniPerInstanceLimitExceeded",
    );
    emu.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e1),
            ("SecondaryPrivateIpAddressCount", "4"),
        ],
    );
    emu.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e1),
            ("SecondaryPrivateIpAddressCount", "1"),
        ],
        403,
        "InvalidOperation.Ipv4CountExceeded",
    );
    emu.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &e1),
            ("SecondaryPrivateIpAddressCount", "11"),
        ],
        400,
        "InvalidParameter",
    );
    emu.err(
        "AssignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e1)],
        400,
        "MissingParameter",
    );
    // Cap vsw-b's free addresses at runtime to force exhaustion.
    emu.admin(
        "PUT",
        "/admin/faults",
        &format!("{{\"vswitch_free_cap\": {{\"{VSW_B}\": 3}}}}"),
    );
    let v = emu.ok("DescribeVSwitches", &[("VSwitchId", VSW_B)]);
    assert_eq!(v["VSwitches"]["VSwitch"][0]["AvailableIpAddressCount"], 3);
    let eb = emu.create_eni(VSW_B, "1");
    let v = emu.err(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &eb),
            ("SecondaryPrivateIpAddressCount", "2"),
        ],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    assert_eq!(
        v["Message"],
        format!("The specified VSwitch \"{VSW_B}\" has not enough IpAddress.")
    );
    let v = emu.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", VSW_B),
            ("SecurityGroupIds.1", SG),
            ("SecondaryPrivateIpAddressCount", "5"),
        ],
        403,
        "InvalidVSwitchId.IpNotEnough",
    );
    assert!(v["Message"].as_str().unwrap().contains(VSW_B));
    emu.err(
        "CreateNetworkInterface",
        &[("VSwitchId", "vsw-nope"), ("SecurityGroupIds.1", SG)],
        404,
        "InvalidVSwitchId.NotFound",
    );
    emu.err(
        "CreateNetworkInterface",
        &[("VSwitchId", VSW_A), ("SecurityGroupIds.1", "sg-nope")],
        404,
        "InvalidSecurityGroupId.NotFound",
    );
    emu.admin("PUT", "/admin/faults", "{}");
    emu.ok(
        "AssignPrivateIpAddresses",
        &[
            ("NetworkInterfaceId", &eb),
            ("SecondaryPrivateIpAddressCount", "2"),
        ],
    );
}

#[test]
fn client_token_idempotency_and_paging() {
    let emu = Emu::fast("idem");
    let p = [
        ("VSwitchId", VSW_A),
        ("SecurityGroupIds.1", SG),
        ("ClientToken", "tok-1"),
    ];
    let a = emu.ok("CreateNetworkInterface", &p);
    let b = emu.ok("CreateNetworkInterface", &p);
    assert_eq!(a["NetworkInterfaceId"], b["NetworkInterfaceId"]);
    assert_ne!(a["RequestId"], b["RequestId"]);
    emu.err(
        "CreateNetworkInterface",
        &[
            ("VSwitchId", VSW_B),
            ("SecurityGroupIds.1", SG),
            ("ClientToken", "tok-1"),
        ],
        400,
        "IdempotentParameterMismatch",
    );
    let id = a["NetworkInterfaceId"].as_str().unwrap();
    let q = [
        ("NetworkInterfaceId", id),
        ("SecondaryPrivateIpAddressCount", "1"),
        ("ClientToken", "tok-2"),
    ];
    let x = emu.ok("AssignPrivateIpAddresses", &q);
    let y = emu.ok("AssignPrivateIpAddresses", &q);
    assert_eq!(
        x["AssignedPrivateIpAddressesSet"],
        y["AssignedPrivateIpAddressesSet"]
    );
    assert_eq!(
        ips_of(&emu.eni(id)).len(),
        2,
        "the retry assigned nothing new"
    );
    for _ in 0..11 {
        emu.create_eni(VSW_A, "0");
    }
    // 12 created + 2 primaries: NextToken paging must be followed. MaxResults below 10 is
    // taken as 10 (the API clamps it to 10..=500 rather than refusing it).
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let mut p = vec![("MaxResults", "5")];
        if !token.is_empty() {
            p.push(("NextToken", token.as_str()));
        }
        let v = emu.ok("DescribeNetworkInterfaces", &p);
        for e in v["NetworkInterfaceSets"]["NetworkInterfaceSet"]
            .as_array()
            .unwrap()
        {
            seen.push(e["NetworkInterfaceId"].as_str().unwrap().to_string());
        }
        pages.push(seen.len());
        token = v["NextToken"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 14);
    assert_eq!(pages, [10, 14]);
    let v = emu.ok("DescribeNetworkInterfaces", &[("MaxResults", "100000")]);
    assert_eq!(v["NextToken"], "", "clamped to 500: one page");
    assert_eq!(v["TotalCount"], 14);
    let v = emu.ok("DescribeNetworkInterfaces", &[]);
    assert_eq!(
        v["NetworkInterfaceSets"]["NetworkInterfaceSet"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    assert_eq!(v["TotalCount"], 14);
    let v = emu.ok(
        "DescribeNetworkInterfaces",
        &[("PageNumber", "2"), ("PageSize", "10")],
    );
    assert_eq!(
        v["NetworkInterfaceSets"]["NetworkInterfaceSet"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let v = emu.ok(
        "DescribeNetworkInterfaces",
        &[("Tag.1.Key", "nope"), ("Tag.1.Value", "x")],
    );
    assert_eq!(v["TotalCount"], 0);
}

#[test]
fn throttling_error_injection_latency_and_audit() {
    let emu = Emu::fast("fault");
    emu.admin("DELETE", "/admin/calls", "");
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"rate_limits": {"DescribeNetworkInterfaces": 2}}"#,
    );
    emu.ok("DescribeNetworkInterfaces", &[]);
    emu.ok("DescribeNetworkInterfaces", &[]);
    let v = emu.err("DescribeNetworkInterfaces", &[], 400, "Throttling.User");
    assert_eq!(v["Message"], "Request was denied due to user flow control.");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    emu.ok("DescribeNetworkInterfaces", &[]);
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"error_rate": 1.0, "error_actions": ["CreateNetworkInterface"]}"#,
    );
    for _ in 0..3 {
        let (s, v) = emu.call(
            "CreateNetworkInterface",
            &[("VSwitchId", VSW_A), ("SecurityGroupIds.1", SG)],
        );
        assert!(s == 500 || s == 503, "{v}");
        assert!(["InternalError", "ServiceUnavailable"].contains(&v["Code"].as_str().unwrap()));
    }
    // Operation.Conflict: 403, nothing done.
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"conflict_rate": 1.0, "error_actions": ["CreateNetworkInterface"]}"#,
    );
    let v = emu.err(
        "CreateNetworkInterface",
        &[("VSwitchId", VSW_A), ("SecurityGroupIds.1", SG)],
        403,
        "Operation.Conflict",
    );
    assert!(v["Message"].as_str().unwrap().contains("try again"), "{v}");
    assert_eq!(emu.admin("GET", "/admin/faults", "")["conflict_rate"], 1.0);
    emu.admin(
        "PUT",
        "/admin/faults",
        r#"{"latency_ms": {"DescribeInstanceTypes": 300}}"#,
    );
    let t = std::time::Instant::now();
    emu.ok("DescribeInstanceTypes", &[]);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    let calls = emu.admin("GET", "/admin/calls", "");
    assert_eq!(calls["DescribeNetworkInterfaces"]["total"], 4);
    assert_eq!(calls["DescribeNetworkInterfaces"]["ok"], 3);
    assert_eq!(
        calls["DescribeNetworkInterfaces"]["errors"]["Throttling.User"],
        1
    );
    assert_eq!(calls["CreateNetworkInterface"]["total"], 4);
    assert_eq!(calls["CreateNetworkInterface"]["ok"], 0);
    assert_eq!(
        calls["CreateNetworkInterface"]["errors"]["Operation.Conflict"],
        1
    );
    let faults = emu.admin("GET", "/admin/faults", "");
    assert_eq!(faults["latency_ms"]["DescribeInstanceTypes"], 300);
    // The model dump shows every ENI; no ENI was created by the failed calls.
    let model = emu.admin("GET", "/admin/model", "");
    assert_eq!(model["enis"].as_array().unwrap().len(), 2);
    assert_eq!(model["instances"][A]["instance_type"], "ecs.g7.4xlarge");
    emu.admin(
        "PUT",
        "/admin/timing",
        r#"{"attach_delay_ms": 0, "detach_delay_ms": 0, "metadata_lag_ms": 0}"#,
    );
    let timing = emu.admin("GET", "/admin/timing", "");
    assert_eq!(timing["metadata_lag_ms"], 0);
    assert_eq!(timing["delete_delay_ms"], 0, "defaults to detach_delay_ms");
    let (s, _) = emu.raw("PUT", "/admin/faults", &[], b"{\"bogus\": 1}");
    assert_eq!(s, 400);
}

/// `RegionId` where each action's API reference has it, and answers without undocumented fields.
#[test]
fn region_ids_and_fields_as_documented() {
    let emu = Emu::fast("region");
    let exact = |action: &str, version: &str, p: &[(&str, &str)]| {
        emu.call_exact(KEY_ID, SECRET, None, action, version, p)
    };
    // DescribeInstanceTypes has no RegionId: none is needed, one is ignored.
    let (s, v) = exact("DescribeInstanceTypes", ECS, &[]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["InstanceTypes"]["InstanceType"].as_array().unwrap().len(),
        3
    );
    let (s, v) = exact("DescribeInstanceTypes", ECS, &[("RegionId", "cn-nowhere")]);
    assert_eq!(s, 200, "{v}");
    // Required on the ENI actions and DescribeInstances.
    for action in ["DescribeNetworkInterfaces", "DescribeInstances"] {
        let (s, v) = exact(action, ECS, &[]);
        assert_eq!(
            (s, v["Code"].as_str()),
            (400, Some("MissingParameter")),
            "{v}"
        );
        assert!(v["Message"].as_str().unwrap().contains("RegionId"));
    }
    // DescribeVSwitches: RegionId or VpcId.
    let vpc = emu.admin("GET", "/admin/model", "")["vpc_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = exact("DescribeVSwitches", VPC, &[("VpcId", &vpc)]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["TotalCount"], 2);
    let (s, v) = exact("DescribeVSwitches", VPC, &[]);
    assert_eq!(
        (s, v["Code"].as_str()),
        (400, Some("MissingParameter")),
        "{v}"
    );
    let (s, v) = exact("DescribeVSwitches", VPC, &[("RegionId", "cn-nowhere")]);
    assert_eq!(
        (s, v["Code"].as_str()),
        (404, Some("InvalidRegionId.NotFound")),
        "{v}"
    );
    // No NextToken in DescribeVSwitches (it pages by number only).
    let v = emu.ok(
        "DescribeVSwitches",
        &[("PageSize", "1"), ("MaxResults", "50")],
    );
    assert!(v.get("NextToken").is_none(), "{v}");
    assert_eq!(v["VSwitches"]["VSwitch"].as_array().unwrap().len(), 1);
    // Route entries: RegionId optional.
    let (s, v) = exact(
        "CreateRouteEntry",
        VPC,
        &[
            ("RouteTableId", "vtb-emu00000000000000001"),
            ("DestinationCidrBlock", "10.100.9.0/24"),
            ("NextHopId", A),
        ],
    );
    assert_eq!(s, 200, "{v}");
    let id = v["RouteEntryId"].as_str().unwrap().to_string();
    let (s, v) = exact("DeleteRouteEntry", VPC, &[("RouteEntryId", &id)]);
    assert_eq!(s, 200, "{v}");
    // CreateNetworkInterface answers without CreationTime (DescribeNetworkInterfaces has it).
    let v = emu.ok(
        "CreateNetworkInterface",
        &[("VSwitchId", VSW_A), ("SecurityGroupIds.1", SG)],
    );
    for f in ["CreationTime", "InstanceId", "Attachment"] {
        assert!(v.get(f).is_none(), "{f} in {v}");
    }
    let id = v["NetworkInterfaceId"].as_str().unwrap();
    assert!(emu.eni(id)["CreationTime"].is_string());
}

#[test]
fn routes_and_vswitches() {
    let emu = Emu::fast("route");
    let v = emu.ok("DescribeVSwitches", &[("ZoneId", "cn-hangzhou-k")]);
    let vs = &v["VSwitches"]["VSwitch"][0];
    assert_eq!(vs["VSwitchId"], VSW_A);
    assert_eq!(vs["CidrBlock"], "172.16.0.0/24");
    assert_eq!(vs["AvailableIpAddressCount"], 250);
    let rt = vs["RouteTable"]["RouteTableId"]
        .as_str()
        .unwrap()
        .to_string();
    let v = emu.ok(
        "CreateRouteEntry",
        &[
            ("RouteTableId", &rt),
            ("DestinationCidrBlock", "10.100.0.0/24"),
            ("NextHopType", "Instance"),
            ("NextHopId", A),
        ],
    );
    let rte = v["RouteEntryId"].as_str().unwrap().to_string();
    emu.err(
        "CreateRouteEntry",
        &[
            ("RouteTableId", &rt),
            ("DestinationCidrBlock", "10.100.0.0/24"),
            ("NextHopId", B),
        ],
        400,
        "InvalidCIDRBlock.Duplicate",
    );
    emu.err(
        "CreateRouteEntry",
        &[
            ("RouteTableId", "vtb-nope"),
            ("DestinationCidrBlock", "10.101.0.0/24"),
            ("NextHopId", B),
        ],
        404,
        "InvalidRouteTableId.NotFound",
    );
    let v = emu.ok(
        "DescribeRouteEntryList",
        &[("RouteTableId", &rt), ("RouteEntryType", "Custom")],
    );
    let e = &v["RouteEntrys"]["RouteEntry"][0];
    assert_eq!(e["RouteEntryId"], rte.as_str());
    assert_eq!(e["NextHops"]["NextHop"][0]["NextHopId"], A);
    // A named entry; the next hop filters (as the cloud controller manager uses them).
    emu.ok(
        "CreateRouteEntry",
        &[
            ("RouteTableId", &rt),
            ("DestinationCidrBlock", "10.102.0.0/24"),
            ("NextHopType", "Instance"),
            ("NextHopId", B),
            ("RouteEntryName", "terway-b"),
        ],
    );
    let of = |hop: &str| -> Vec<String> {
        let v = emu.ok(
            "DescribeRouteEntryList",
            &[
                ("RouteTableId", &rt),
                ("NextHopType", "Instance"),
                ("NextHopId", hop),
            ],
        );
        v["RouteEntrys"]["RouteEntry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["DestinationCidrBlock"], e["RouteEntryName"]))
            .collect()
    };
    assert_eq!(of(A), ["\"10.100.0.0/24\" \"\""]);
    assert_eq!(of(B), ["\"10.102.0.0/24\" \"terway-b\""]);
    emu.ok(
        "DeleteRouteEntry",
        &[
            ("RouteTableId", &rt),
            ("DestinationCidrBlock", "10.102.0.0/24"),
            ("NextHopId", B),
        ],
    );
    assert!(of(B).is_empty());
    // The VPC's route tables: its system table, used by every vSwitch.
    let vpc = vs["VpcId"].as_str().unwrap();
    let v = emu.ok("DescribeRouteTableList", &[("VpcId", vpc)]);
    assert_eq!(v["TotalCount"], 1);
    let t = &v["RouterTableList"]["RouterTableListType"][0];
    assert_eq!(t["RouteTableId"], rt.as_str());
    assert_eq!(t["RouteTableType"], "System");
    assert_eq!(t["VpcId"], vpc);
    assert!(
        t["VSwitchIds"]["VSwitchId"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == VSW_A),
        "{t}"
    );
    let v = emu.ok("DescribeRouteTableList", &[("RouteTableId", "vtb-other")]);
    assert_eq!(v["TotalCount"], 0);
    emu.err(
        "DescribeRouteTableList",
        &[("VpcId", "vpc-nope")],
        404,
        "InvalidVpcId.NotFound",
    );
    emu.ok(
        "DeleteRouteEntry",
        &[("RouteTableId", &rt), ("RouteEntryId", &rte)],
    );
    emu.err(
        "DeleteRouteEntry",
        &[("RouteTableId", &rt), ("RouteEntryId", &rte)],
        404,
        "InvalidRouteEntry.NotFound",
    );
    let v = emu.ok(
        "DescribeInstances",
        &[("InstanceIds", &format!("[\"{A}\"]"))],
    );
    assert_eq!(
        v["Instances"]["Instance"][0]["InstanceType"],
        "ecs.g7.4xlarge"
    );
}

#[test]
fn metadata_tokens_and_ram_role_credentials_work_against_the_api() {
    let emu = Emu::fast("meta");
    assert_eq!(emu.meta(A, "instance-id"), (200, A.to_string()));
    assert_eq!(emu.meta(A, "region-id").1, REGION);
    assert_eq!(emu.meta(B, "vswitch-id").1, VSW_A);
    assert_eq!(emu.meta(A, "nope").0, 404);
    assert_eq!(emu.meta("i-nope", "instance-id").0, 404);
    let (s, token) = emu.raw(
        "PUT",
        &format!("/instances/{A}/latest/api/token"),
        &[("X-aliyun-ecs-metadata-token-ttl-seconds", "60")],
        b"",
    );
    assert_eq!(s, 200);
    let path = format!("/instances/{A}/latest/meta-data/instance-id");
    assert_eq!(
        emu.raw(
            "GET",
            &path,
            &[("X-aliyun-ecs-metadata-token", &token)],
            b""
        )
        .1,
        A
    );
    assert_eq!(
        emu.raw(
            "GET",
            &path,
            &[("X-aliyun-ecs-metadata-token", "bogus")],
            b""
        )
        .0,
        401
    );
    let bpath = format!("/instances/{B}/latest/meta-data/instance-id");
    assert_eq!(
        emu.raw(
            "GET",
            &bpath,
            &[("X-aliyun-ecs-metadata-token", &token)],
            b""
        )
        .0,
        401,
        "token of another instance"
    );
    assert_eq!(
        emu.raw("PUT", &format!("/instances/{A}/latest/api/token"), &[], b"")
            .0,
        400
    );
    let role = emu.meta(A, "ram/security-credentials/").1;
    let (s, creds) = emu.meta(A, &format!("ram/security-credentials/{role}"));
    assert_eq!(s, 200);
    let c: Value = serde_json::from_str(&creds).unwrap();
    let (id, secret, tok) = (
        c["AccessKeyId"].as_str().unwrap(),
        c["AccessKeySecret"].as_str().unwrap(),
        c["SecurityToken"].as_str().unwrap(),
    );
    assert!(sign::parse_timestamp(c["Expiration"].as_str().unwrap()).is_some());
    let (s, v) = emu.call_as(id, secret, Some(tok), "DescribeInstanceTypes", ECS, &[]);
    assert_eq!(s, 200, "{v}");
    let (s, v) = emu.call_as(
        id,
        secret,
        Some("forged"),
        "DescribeInstanceTypes",
        ECS,
        &[],
    );
    assert_eq!(s, 400, "{v}");

    // Hardened mode: every metadata GET needs a token.
    let path = fast_config("hardened", 300, 600);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["metadata_require_token"] = true.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let hard = Emu::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(hard.meta(A, "instance-id").0, 401);
    let (_, token) = hard.raw(
        "PUT",
        &format!("/instances/{A}/latest/api/token"),
        &[("X-aliyun-ecs-metadata-token-ttl-seconds", "21600")],
        b"",
    );
    let p = format!("/instances/{A}/latest/meta-data/instance-id");
    assert_eq!(
        hard.raw("GET", &p, &[("X-aliyun-ecs-metadata-token", &token)], b""),
        (200, A.to_string())
    );
}
