//! Instance metadata answers (pure): what `http://100.100.100.200/latest/meta-data/<path>` says
//! to one instance at a given time. It lags the API by `timing.metadata_lag_ms`, as the real
//! service does: an attached ENI or an assigned address shows up only after the lag, and a
//! detached ENI or unassigned address disappears only after it.

use crate::cloud::sign::{format_timestamp, sha256_hex};
use crate::emulate::model::{Cidr6, Eni, EniType, Model, Ms};
use std::net::Ipv6Addr;

/// STS credentials of an instance's RAM role, derived from the emulator's first access key so
/// the API can verify them without storing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsCredentials {
    pub key_id: String,
    pub secret: String,
    pub token: String,
}

pub const STS_PREFIX: &str = "STS.emu.";

pub fn sts_credentials(master_secret: &str, instance_id: &str) -> StsCredentials {
    StsCredentials {
        key_id: format!("{STS_PREFIX}{instance_id}"),
        secret: sha256_hex(format!("secret:{master_secret}:{instance_id}").as_bytes())[..32]
            .to_string(),
        token: sha256_hex(format!("token:{master_secret}:{instance_id}").as_bytes()),
    }
}

fn visible(m: &Model, inst: &str, now: Ms) -> Vec<Eni> {
    let lag = m.timing.metadata_lag_ms;
    let mut v: Vec<Eni> = m
        .enis
        .iter()
        .filter(|e| e.meta_instance.as_deref() == Some(inst))
        .filter(|e| {
            // The primary ENI exists as long as the instance does.
            e.eni_type == EniType::Primary
                || (e.meta_from.is_some_and(|t| t + lag <= now)
                    && e.meta_until.is_none_or(|t| now < t + lag))
        })
        .cloned()
        .collect();
    v.sort_by_key(|e| e.device_index.unwrap_or(u32::MAX));
    v
}

fn ipv4s(e: &Eni, lag: Ms, now: Ms) -> Vec<String> {
    let mut out = vec![e.primary_ip.to_string()];
    out.extend(
        e.secondary
            .iter()
            .filter(|r| r.since + lag <= now && r.removed.is_none_or(|t| now < t + lag))
            .map(|r| r.ip.to_string()),
    );
    out
}

fn ipv6s(e: &Eni, lag: Ms, now: Ms) -> Vec<String> {
    e.ipv6
        .iter()
        .filter(|r| r.since + lag <= now && r.removed.is_none_or(|t| now < t + lag))
        .map(|r| r.ip.to_string())
        .collect()
}

/// The ENI IPv6 gateway of a vSwitch: the third address from the end of its /64, as the IPv4
/// gateway is (`.253` of a /24). `--netns` answers NDP for it on every ENI of the vSwitch.
pub fn ipv6_gateway(c: &Cidr6) -> Ipv6Addr {
    let mask = c.mask();
    let net = u128::from(c.addr) & mask;
    Ipv6Addr::from(net | (!mask - 2))
}

/// `ipv6s` as the real service writes it: bracketed, comma-separated, unquoted
/// (`[2408:4005:39c:7a00:b1ad:8fa2:f04:e4e]`); `None` (404) when the ENI has no IPv6.
fn ipv6s_text(ips: &[String]) -> Option<String> {
    (!ips.is_empty()).then(|| format!("[{}]", ips.join(",")))
}

const PER_MAC: &[&str] = &[
    "network-interface-id",
    "primary-ip-address",
    "gateway",
    "netmask",
    "private-ipv4s",
    "vpc-id",
    "vpc-cidr-block",
    "vswitch-id",
    "vswitch-cidr-block",
    "ipv6s",
    "ipv6-gateway",
    "vswitch-ipv6-cidr-block",
];

/// The answer to `GET /latest/meta-data/<path>` for `inst`, or `None` (404).
/// `master_secret` signs the RAM role credentials.
pub fn answer(m: &Model, inst: &str, path: &str, now: Ms, master_secret: &str) -> Option<String> {
    let i = m.instances.get(inst)?;
    let path = path.trim_matches('/');
    let lag = m.timing.metadata_lag_ms;
    let enis = visible(m, inst, now);
    let primary = m.enis.iter().find(|e| e.id == i.primary_eni_id)?;
    let vsw = m.vswitches.get(&i.vswitch_id)?;
    let simple = match path {
        "" => Some(
            [
                "hostname",
                "instance-id",
                "instance/",
                "mac",
                "network/",
                "private-ipv4",
                "ram/",
                "region-id",
                "vpc-cidr-block",
                "vpc-id",
                "vswitch-cidr-block",
                "vswitch-id",
                "zone-id",
            ]
            .join("\n"),
        ),
        "instance-id" | "hostname" => Some(i.id.clone()),
        "instance" => Some("instance-type".into()),
        "instance/instance-type" => Some(i.instance_type.clone()),
        "region-id" => Some(m.region_id.clone()),
        "zone-id" => Some(i.zone_id.clone()),
        "vpc-id" => Some(m.vpc_id.clone()),
        "vpc-cidr-block" => Some(m.vpc_cidr.to_string()),
        "vswitch-id" => Some(i.vswitch_id.clone()),
        "vswitch-cidr-block" => Some(vsw.cidr.to_string()),
        "private-ipv4" => Some(primary.primary_ip.to_string()),
        "mac" => Some(primary.mac.clone()),
        "network" => Some("interfaces/".into()),
        "network/interfaces" => Some("macs/".into()),
        "network/interfaces/macs" => Some(
            enis.iter()
                .map(|e| format!("{}/", e.mac))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        "ram" => Some("security-credentials/".into()),
        "ram/security-credentials" => i.ram_role.clone(),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    if let Some(role) = path.strip_prefix("ram/security-credentials/") {
        if i.ram_role.as_deref() != Some(role) {
            return None;
        }
        let c = sts_credentials(master_secret, inst);
        let secs = now / 1000;
        let doc = serde_json::json!({
            "AccessKeyId": c.key_id,
            "AccessKeySecret": c.secret,
            "SecurityToken": c.token,
            "Expiration": format_timestamp(secs + 6 * 3600),
            "LastUpdated": format_timestamp(secs),
            "Code": "Success",
        });
        return serde_json::to_string_pretty(&doc).ok();
    }
    let rest = path.strip_prefix("network/interfaces/macs/")?;
    let (mac, key) = rest.split_once('/').unwrap_or((rest, ""));
    let e = enis.iter().find(|e| e.mac.eq_ignore_ascii_case(mac))?;
    let ev = m.vswitches.get(&e.vswitch_id)?;
    let json_list = |v: Vec<String>| serde_json::to_string(&v).unwrap_or_else(|_| "[]".into());
    match key {
        "" => Some(PER_MAC.join("\n")),
        "network-interface-id" => Some(e.id.clone()),
        "primary-ip-address" => Some(e.primary_ip.to_string()),
        "gateway" => Some(ev.cidr.gateway().to_string()),
        "netmask" => Some(ev.cidr.netmask().to_string()),
        "private-ipv4s" => Some(json_list(ipv4s(e, lag, now))),
        "vpc-id" => Some(m.vpc_id.clone()),
        "vpc-cidr-block" => Some(m.vpc_cidr.to_string()),
        "vswitch-id" => Some(e.vswitch_id.clone()),
        "vswitch-cidr-block" => Some(ev.cidr.to_string()),
        "ipv6s" => ipv6s_text(&ipv6s(e, lag, now)),
        "ipv6-gateway" => ev.ipv6_cidr.as_ref().map(|c| ipv6_gateway(c).to_string()),
        "vswitch-ipv6-cidr-block" => ev.ipv6_cidr.map(|c| c.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::config::EmuConfig;
    use crate::emulate::model_eni::CreateEni;

    const A: &str = "i-emu000000000000000a";

    #[test]
    fn attach_and_assign_show_up_after_the_lag() {
        let mut m = Model::new(&EmuConfig::embedded().unwrap(), 0).unwrap();
        m.timing.attach_delay_ms = 100;
        m.timing.detach_delay_ms = 100;
        m.timing.metadata_lag_ms = 1000;
        let macs = |m: &Model, t| answer(m, A, "network/interfaces/macs/", t, "s").unwrap();
        assert_eq!(macs(&m, 0).lines().count(), 1);
        assert_eq!(answer(&m, A, "mac", 0, "s").unwrap(), m.enis[0].mac);
        assert_eq!(
            answer(&m, A, "instance/instance-type", 0, "s").unwrap(),
            "ecs.g7.4xlarge"
        );
        let req = CreateEni {
            vswitch_id: "vsw-emu0000000000000000a".into(),
            security_group_ids: vec!["sg-emu00000000000000001".into()],
            eni_type: EniType::Secondary,
            primary_ip: None,
            secondary_count: 2,
            secondary_ips: vec![],
            ipv6_count: 1,
            tags: vec![],
            description: String::new(),
            name: String::new(),
        };
        let id = m.create_eni(&req, 0).unwrap();
        m.attach_eni(A, &id, None, 0).unwrap();
        m.advance(100);
        assert_eq!(macs(&m, 100).lines().count(), 1, "InUse but metadata lags");
        m.advance(1100);
        assert_eq!(macs(&m, 1100).lines().count(), 2);
        let mac = m.eni(&id).unwrap().mac.clone();
        let base = format!("network/interfaces/macs/{mac}/");
        let ips: Vec<String> = serde_json::from_str(
            &answer(&m, A, &format!("{base}private-ipv4s"), 1100, "s").unwrap(),
        )
        .unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(
            answer(&m, A, &format!("{base}gateway"), 1100, "s").unwrap(),
            "172.16.0.253"
        );
        assert_eq!(
            answer(&m, A, &format!("{base}netmask"), 1100, "s").unwrap(),
            "255.255.255.0"
        );
        assert_eq!(
            answer(&m, A, &format!("{base}network-interface-id"), 1100, "s").unwrap(),
            id
        );
        let v6 = answer(&m, A, &format!("{base}ipv6s"), 1100, "s").unwrap();
        let want = format!("[{}]", m.eni(&id).unwrap().ipv6[0].ip);
        assert_eq!(v6, want, "bracketed, unquoted");
        assert_eq!(
            crate::cloud::metadata::parse_ipv6s(&v6).unwrap().len(),
            1,
            "the client reads it"
        );
        let new = m.assign_ips(&id, 1, &[], 2000).unwrap();
        let count = |m: &Model, t| {
            serde_json::from_str::<Vec<String>>(
                &answer(m, A, &format!("{base}private-ipv4s"), t, "s").unwrap(),
            )
            .unwrap()
            .len()
        };
        assert_eq!(count(&m, 2500), 3);
        assert_eq!(count(&m, 3000), 4);
        m.unassign_ips(&id, &new, 3000).unwrap();
        assert_eq!(count(&m, 3500), 4, "still visible during the lag");
        assert_eq!(count(&m, 4000), 3);
        m.detach_eni(A, &id, 5000).unwrap();
        m.advance(5100);
        assert_eq!(macs(&m, 5100).lines().count(), 2);
        assert_eq!(macs(&m, 6000).lines().count(), 1);
        assert_eq!(answer(&m, A, "nope", 0, "s"), None);
        assert_eq!(answer(&m, "i-nope", "instance-id", 0, "s"), None);
    }

    #[test]
    fn ipv6s_are_bracketed_and_404_without_ipv6() {
        let mut m = Model::new(&EmuConfig::embedded().unwrap(), 0).unwrap();
        m.timing.attach_delay_ms = 100;
        m.timing.metadata_lag_ms = 1000;
        let req = CreateEni {
            vswitch_id: "vsw-emu0000000000000000a".into(),
            security_group_ids: vec!["sg-emu00000000000000001".into()],
            eni_type: EniType::Secondary,
            primary_ip: None,
            secondary_count: 0,
            secondary_ips: vec![],
            ipv6_count: 1,
            tags: vec![],
            description: String::new(),
            name: String::new(),
        };
        let id = m.create_eni(&req, 0).unwrap();
        m.attach_eni(A, &id, None, 0).unwrap();
        m.advance(1100);
        let base = format!("network/interfaces/macs/{}/", m.eni(&id).unwrap().mac);
        let want = format!("[{}]", m.eni(&id).unwrap().ipv6[0].ip);
        // The primary ENI has the instance's IPv6 from the start (`ipv6_address_count`).
        let primary = format!("network/interfaces/macs/{}/ipv6s", m.enis[0].mac);
        assert_eq!(
            answer(&m, A, &primary, 1100, "s").unwrap(),
            format!("[{}]", m.enis[0].ipv6[0].ip)
        );
        let two = m.assign_ipv6(&id, 1, &[], 1100).unwrap();
        let both = format!("{},{}]", want.trim_end_matches(']'), two[0]);
        assert_eq!(
            answer(&m, A, &format!("{base}ipv6s"), 2100, "s").unwrap(),
            both
        );
        assert_eq!(
            answer(&m, A, &format!("{base}ipv6-gateway"), 1100, "s").unwrap(),
            "2408:4005:3c4:a00:ffff:ffff:ffff:fffd"
        );
        assert_eq!(
            answer(&m, A, &format!("{base}vswitch-ipv6-cidr-block"), 1100, "s").unwrap(),
            "2408:4005:3c4:a00::/64"
        );
        let plain = m
            .create_eni(
                &CreateEni {
                    ipv6_count: 0,
                    ..req.clone()
                },
                2100,
            )
            .unwrap();
        m.attach_eni(A, &plain, None, 2100).unwrap();
        let pmac = m.eni(&plain).unwrap().mac.clone();
        m.advance(3200);
        assert_eq!(
            answer(
                &m,
                A,
                &format!("network/interfaces/macs/{pmac}/ipv6s"),
                3200,
                "s"
            ),
            None,
            "404 without IPv6"
        );
        m.unassign_ipv6(&id, &two, 3200).unwrap();
        assert_eq!(
            answer(&m, A, &format!("{base}ipv6s"), 3200, "s").unwrap(),
            both,
            "still listed during the lag"
        );
        assert_eq!(
            answer(&m, A, &format!("{base}ipv6s"), 4300, "s").unwrap(),
            want
        );
    }

    #[test]
    fn ram_role_credentials() {
        let m = Model::new(&EmuConfig::embedded().unwrap(), 0).unwrap();
        assert_eq!(
            answer(&m, A, "ram/security-credentials/", 0, "s").unwrap(),
            "TerwayEmulatorRole"
        );
        let doc = answer(&m, A, "ram/security-credentials/TerwayEmulatorRole", 0, "s").unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["AccessKeyId"], sts_credentials("s", A).key_id);
        assert_eq!(v["Code"], "Success");
        assert!(answer(&m, A, "ram/security-credentials/Other", 0, "s").is_none());
    }
}
