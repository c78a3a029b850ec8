//! `terway eni list` and `terway eni delete`: the region's ENIs that terway created (tag
//! `creator=terway`), their state and owner (tag `terway.node`), leaks flagged; deleting chosen
//! ones (detach, wait, delete). The ENI removal here is also what `terway node cleanup` runs.

use super::cloud_access::{Access, CloudArgs, age};
use super::{print_json, table};
use crate::cloud::codes;
use crate::cloud::ecs::{Ecs, EniFilter, EniInfo};
use crate::cloud::error::CloudError;
use crate::cloud::http::unix_now;
use crate::cloud::lifecycle::{self, TAG_CREATOR, TAG_NODE};
use crate::cloud::sign::format_timestamp;
use crate::config::parse_duration;
use crate::output;
use crate::{Error, Kind, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum EniCommand {
    /// List the region's ENIs created by terway (tag creator=terway) with their state and owner
    /// (tag terway.node), flagging leaks: Available for longer than --grace, owned by an instance
    /// that no longer exists, or attached to another instance. Exits non-zero when any leaks.
    List(EniListArgs),
    /// Delete chosen ENIs created by terway: detach (with --detach), wait, delete. Prints what it
    /// would do unless --yes.
    Delete(EniDeleteArgs),
}

#[derive(Debug, Args)]
pub struct EniListArgs {
    /// Only the ENIs created for this instance (tag terway.node).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// An Available ENI older than this is a leak (the daemon attaches what it creates within
    /// seconds; the API gives creation times, not detach times).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub grace: Duration,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EniDeleteArgs {
    /// The ENIs to delete (eni-…); each must carry the tag creator=terway.
    #[arg(required = true, value_name = "ENI")]
    pub ids: Vec<String>,
    /// Act: without it nothing changes and the plan is printed.
    #[arg(long)]
    pub yes: bool,
    /// Detach ENIs that are attached before deleting them (pods on that node lose their
    /// addresses); without it an attached ENI is refused.
    #[arg(long)]
    pub detach: bool,
    /// How long to wait for each ENI to detach and go.
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn duration(s: &str) -> std::result::Result<Duration, String> {
    parse_duration(s)
}

/// One resource in a clean-up or delete report.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `ENI` or `route`.
    pub resource: &'static str,
    pub id: String,
    /// What the cloud says about it.
    pub state: String,
    /// What is (or would be) done: `detach from i-…, delete`, `delete`, or `none (<why>)`.
    pub action: String,
    /// `dry run`, `deleted`, `gone already`, `kept`, or `failed: <the cloud's words>`.
    pub result: String,
    pub ok: bool,
}

impl Step {
    pub fn acts(&self) -> bool {
        !self.action.starts_with("none")
    }
}

pub fn render_steps(steps: &[Step]) -> String {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.resource.to_string(),
                s.id.clone(),
                s.state.clone(),
                s.action.clone(),
                s.result.clone(),
            ]
        })
        .collect();
    table::render(&["Resource", "ID", "State", "Action", "Result"], &rows)
}

fn eni_state(e: &EniInfo) -> String {
    match &e.instance_id {
        Some(i) if e.status != "Available" => format!("{} on {i}", e.status),
        _ => e.status.clone(),
    }
}

/// What removing `e` takes; `None` and a reason when it must be left alone. `may_detach` says
/// whether an ENI attached to that instance may be detached.
pub fn plan_eni(
    e: &EniInfo,
    may_detach: &dyn Fn(&str) -> std::result::Result<(), String>,
) -> std::result::Result<String, String> {
    match e.status.as_str() {
        "Available" | "CreateFailed" => Ok("delete".into()),
        "Deleting" => Ok("wait until gone".into()),
        "Detaching" => Ok("wait for detach, delete".into()),
        "InUse" | "Attaching" => {
            let inst = e.instance_id.clone().unwrap_or_default();
            may_detach(&inst)?;
            Ok(format!("detach from {inst}, delete"))
        }
        other => Err(format!("status {other}")),
    }
}

/// Detaches (when `may_detach` allows), waits, deletes and waits until the ENI is gone,
/// following its status as it changes. Returns `deleted` or `gone already`.
pub fn remove_eni(
    ecs: &Ecs,
    eni_id: &str,
    may_detach: &dyn Fn(&str) -> std::result::Result<(), String>,
    timeout: Duration,
) -> std::result::Result<&'static str, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let err = |e: CloudError| e.to_string();
    let filter = EniFilter {
        eni_ids: vec![eni_id.to_string()],
        ..EniFilter::default()
    };
    // Each round moves the ENI one state on; a handful is plenty.
    for _ in 0..8 {
        let found = match ecs.describe_enis(&filter) {
            Ok(list) => list.into_iter().find(|e| e.id == eni_id),
            Err(e) if e.code == codes::ENI_NOT_FOUND => None,
            Err(e) => return Err(err(e)),
        };
        let Some(e) = found else {
            return Ok("gone already");
        };
        match e.status.as_str() {
            "InUse" => {
                let inst = e.instance_id.clone().unwrap_or_default();
                may_detach(&inst)?;
                ecs.detach_eni(&inst, eni_id).map_err(err)?;
                ecs.wait_eni_status(eni_id, "Available", left())
                    .map_err(err)?;
            }
            "Attaching" => {
                let inst = e.instance_id.clone().unwrap_or_default();
                may_detach(&inst)?;
                ecs.wait_eni_status(eni_id, "InUse", left()).map_err(err)?;
            }
            "Detaching" => {
                ecs.wait_eni_status(eni_id, "Available", left())
                    .map_err(err)?;
            }
            "Deleting" => {
                lifecycle::wait_eni_gone(ecs, eni_id, left()).map_err(err)?;
                return Ok("deleted");
            }
            _ => {
                match ecs.delete_eni(eni_id) {
                    Err(e) if e.code == codes::ENI_NOT_FOUND => {}
                    r => r.map_err(err)?,
                }
                lifecycle::wait_eni_gone(ecs, eni_id, left()).map_err(err)?;
                return Ok("deleted");
            }
        }
    }
    Err(format!("{eni_id} keeps changing state; try again"))
}

/// Carries out the planned steps (ENIs in parallel), filling in each result.
pub fn run_eni_steps(
    ecs: &Ecs,
    steps: &mut [Step],
    may_detach: &(dyn Fn(&str) -> std::result::Result<(), String> + Sync),
    timeout: Duration,
) {
    std::thread::scope(|s| {
        for step in steps.iter_mut().filter(|s| s.resource == "ENI" && s.acts()) {
            s.spawn(
                move || match remove_eni(ecs, &step.id, may_detach, timeout) {
                    Ok(r) => step.result = r.into(),
                    Err(e) => {
                        step.result = format!("failed: {e}");
                        step.ok = false;
                    }
                },
            );
        }
    });
}

/// One ENI in `terway eni list`.
#[derive(Debug, Clone, Serialize)]
pub struct EniRow {
    pub id: String,
    pub status: String,
    /// The `terway.node` tag: the instance the ENI was created for.
    pub owner: Option<String>,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
    pub vswitch_id: String,
    pub primary_ip: String,
    /// Private IPv4 addresses, the primary included.
    pub ips: usize,
    pub creation_time: Option<String>,
    pub age_seconds: Option<u64>,
    /// Why this ENI looks leaked; empty when it does not.
    pub leaks: Vec<String>,
}

/// Flags leaks among terway's ENIs. `existing`: the owners that still exist.
pub fn judge(
    enis: &[EniInfo],
    existing: &BTreeSet<String>,
    grace: Duration,
    now: u64,
) -> Vec<EniRow> {
    enis.iter()
        .map(|e| {
            let owner = lifecycle::tag(&e.tags, TAG_NODE).map(str::to_string);
            let age_seconds = e.creation_time.map(|c| now.saturating_sub(c));
            let mut leaks = Vec::new();
            if let Some(o) = &owner
                && !existing.contains(o)
            {
                leaks.push(format!("owner {o} does not exist"));
            }
            if e.status == "Available"
                && let Some(a) = age_seconds
                && a >= grace.as_secs()
            {
                leaks.push(format!(
                    "Available, created {} ago (grace {})",
                    age(a),
                    age(grace.as_secs())
                ));
            }
            if let (Some(o), Some(i)) = (&owner, &e.instance_id)
                && o != i
                && e.status != "Available"
            {
                leaks.push(format!("attached to {i}, not its owner"));
            }
            EniRow {
                id: e.id.clone(),
                status: e.status.clone(),
                owner,
                instance_id: e.instance_id.clone().filter(|_| e.status != "Available"),
                vswitch_id: e.vswitch_id.clone(),
                primary_ip: e.primary_ip.to_string(),
                ips: 1 + e.secondary_ips.len(),
                creation_time: e.creation_time.map(format_timestamp),
                age_seconds,
                leaks,
            }
        })
        .collect()
}

pub fn render_list(rows: &[EniRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.status.clone(),
                r.owner.clone().unwrap_or_else(|| "-".into()),
                r.instance_id.clone().unwrap_or_else(|| "-".into()),
                r.primary_ip.clone(),
                r.ips.to_string(),
                r.age_seconds.map(age).unwrap_or_else(|| "?".into()),
                if r.leaks.is_empty() {
                    String::new()
                } else {
                    format!("LEAK: {}", r.leaks.join("; "))
                },
            ]
        })
        .collect();
    table::render(
        &[
            "ENI",
            "Status",
            "Owner",
            "Attached To",
            "Primary IP",
            "IPs",
            "Age",
            "Problem",
        ],
        &cells,
    )
}

fn cloud_err(e: CloudError) -> Error {
    Error::new(Kind::Cloud, e.to_string())
}

/// The ENIs terway created, of one owner or all.
fn terway_enis(ecs: &Ecs, owner: Option<&str>) -> Result<Vec<EniInfo>> {
    let tags = match owner {
        Some(o) => lifecycle::node_tags(o),
        None => vec![(TAG_CREATOR.0.to_string(), TAG_CREATOR.1.to_string())],
    };
    let mut list = ecs
        .describe_enis(&EniFilter {
            tags,
            ..EniFilter::default()
        })
        .map_err(cloud_err)?;
    list.retain(|e| lifecycle::created_by_terway(&e.tags));
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(list)
}

pub fn list(a: &EniListArgs) -> Result<ExitCode> {
    let access = Access::new(&a.cloud)?;
    let ecs = access.ecs()?;
    let enis = terway_enis(&ecs, a.instance.as_deref())?;
    let owners: Vec<String> = enis
        .iter()
        .filter_map(|e| lifecycle::tag(&e.tags, TAG_NODE).map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let existing: BTreeSet<String> = if owners.is_empty() {
        BTreeSet::new()
    } else {
        lifecycle::describe_instances(&ecs, &owners)
            .map_err(cloud_err)?
            .into_iter()
            .map(|i| i.id)
            .collect()
    };
    let rows = judge(&enis, &existing, a.grace, unix_now());
    let leaked = rows.iter().filter(|r| !r.leaks.is_empty()).count();
    if a.json {
        print_json(&serde_json::json!({
            "grace_seconds": a.grace.as_secs(),
            "enis": rows,
        }))?;
    } else {
        output::print(&render_list(&rows))?;
    }
    if leaked > 0 {
        output::eprint_line(format_args!(
            "terway: {leaked} leaked ENI(s); `terway eni delete <ENI>... --yes` removes them"
        ));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(a: &EniDeleteArgs) -> Result<ExitCode> {
    let access = Access::new(&a.cloud)?;
    let ecs = access.ecs()?;
    let ids: Vec<String> = a
        .ids
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let found = ecs
        .describe_enis(&EniFilter {
            eni_ids: ids.clone(),
            ..EniFilter::default()
        })
        .map_err(cloud_err)?;
    let detach = a.detach;
    let may_detach = move |inst: &str| -> std::result::Result<(), String> {
        if detach {
            Ok(())
        } else {
            Err(format!(
                "attached to {inst}: pass --detach (its node's pods lose their addresses)"
            ))
        }
    };
    let mut steps: Vec<Step> = ids
        .iter()
        .map(|id| {
            let Some(e) = found.iter().find(|e| &e.id == id) else {
                return Step {
                    resource: "ENI",
                    id: id.clone(),
                    state: "not found".into(),
                    action: "none (no such ENI in this region)".into(),
                    result: "failed".into(),
                    ok: false,
                };
            };
            let state = eni_state(e);
            if !lifecycle::created_by_terway(&e.tags) {
                return Step {
                    resource: "ENI",
                    id: id.clone(),
                    state,
                    action: "none (not created by terway: no tag creator=terway)".into(),
                    result: "refused".into(),
                    ok: false,
                };
            }
            match plan_eni(e, &may_detach) {
                Ok(action) => Step {
                    resource: "ENI",
                    id: id.clone(),
                    state,
                    action,
                    result: if a.yes {
                        String::new()
                    } else {
                        "dry run".into()
                    },
                    ok: true,
                },
                Err(why) => Step {
                    resource: "ENI",
                    id: id.clone(),
                    state,
                    action: format!("none ({why})"),
                    result: "refused".into(),
                    ok: false,
                },
            }
        })
        .collect();
    if a.yes {
        run_eni_steps(&ecs, &mut steps, &may_detach, a.timeout);
    }
    report(&steps, a.yes, a.json, serde_json::json!({}), "")
}

/// Prints the steps (`header`, the table and a summary line, or JSON with `extra` merged in);
/// fails when any step failed or was refused.
pub fn report(
    steps: &[Step],
    acted: bool,
    json: bool,
    extra: serde_json::Value,
    header: &str,
) -> Result<ExitCode> {
    let failed = steps.iter().filter(|s| !s.ok).count();
    let planned = steps.iter().filter(|s| s.acts() && s.ok).count();
    if json {
        let mut v = extra;
        v["dry_run"] = serde_json::json!(!acted);
        v["resources"] = serde_json::to_value(steps)
            .map_err(|e| Error::new(Kind::Internal, format!("encode JSON: {e}")))?;
        print_json(&v)?;
    } else {
        let mut text = header.to_string();
        if !steps.is_empty() {
            text.push_str(&render_steps(steps));
        }
        if acted {
            text.push_str(&format!("deleted {planned}, failed {failed}\n"));
        } else if planned == 0 {
            text.push_str("dry run: nothing to delete\n");
        } else {
            text.push_str(&format!(
                "dry run: nothing changed; run again with --yes to delete the {planned} resource(s) above\n"
            ));
        }
        output::print(&text)?;
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn eni(id: &str, status: &str, owner: Option<&str>, on: Option<&str>, created: u64) -> EniInfo {
        let mut tags = vec![("creator".to_string(), "terway".to_string())];
        if let Some(o) = owner {
            tags.push((TAG_NODE.to_string(), o.to_string()));
        }
        EniInfo {
            id: id.into(),
            status: status.into(),
            eni_type: "Secondary".into(),
            mac: String::new(),
            vswitch_id: "vsw-1".into(),
            zone_id: "z".into(),
            primary_ip: Ipv4Addr::new(172, 16, 0, 9),
            secondary_ips: vec![Ipv4Addr::new(172, 16, 0, 10)],
            ipv6: Vec::new(),
            instance_id: on.map(str::to_string),
            tags,
            creation_time: Some(created),
        }
    }

    #[test]
    fn leaks_are_flagged_with_their_reasons() {
        let now = 10_000;
        let enis = [
            eni("eni-ok", "InUse", Some("i-a"), Some("i-a"), 0),
            eni("eni-young", "Available", Some("i-a"), None, now - 30),
            eni("eni-old", "Available", Some("i-a"), None, now - 900),
            eni("eni-orphan", "InUse", Some("i-gone"), Some("i-gone"), now),
            eni("eni-moved", "InUse", Some("i-a"), Some("i-b"), now),
        ];
        let existing: BTreeSet<String> = ["i-a".to_string(), "i-b".to_string()].into();
        let rows = judge(&enis, &existing, Duration::from_secs(600), now);
        let leaks: Vec<(&str, String)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.leaks.join("; ")))
            .collect();
        assert_eq!(leaks[0], ("eni-ok", String::new()));
        assert_eq!(leaks[1], ("eni-young", String::new()));
        assert_eq!(
            leaks[2],
            (
                "eni-old",
                "Available, created 15m0s ago (grace 10m0s)".into()
            )
        );
        assert_eq!(
            leaks[3],
            ("eni-orphan", "owner i-gone does not exist".into())
        );
        assert_eq!(
            leaks[4],
            ("eni-moved", "attached to i-b, not its owner".into())
        );
        assert_eq!(rows[0].ips, 2);
        assert_eq!(rows[1].instance_id, None);
        // A zero grace flags every Available ENI.
        let rows = judge(&enis[1..2], &existing, Duration::ZERO, now);
        assert_eq!(rows[0].leaks.len(), 1);
        let table = render_list(&rows);
        assert!(table.contains("LEAK: Available"), "{table}");
    }

    #[test]
    fn plans_follow_the_status() {
        let deny = |i: &str| -> std::result::Result<(), String> { Err(format!("on {i}")) };
        let allow = |_: &str| -> std::result::Result<(), String> { Ok(()) };
        let e = eni("eni-1", "Available", Some("i-a"), None, 0);
        assert_eq!(plan_eni(&e, &deny).unwrap(), "delete");
        let e = eni("eni-1", "InUse", Some("i-a"), Some("i-a"), 0);
        assert_eq!(plan_eni(&e, &deny).unwrap_err(), "on i-a");
        assert_eq!(plan_eni(&e, &allow).unwrap(), "detach from i-a, delete");
        let e = eni("eni-1", "Odd", Some("i-a"), None, 0);
        assert!(plan_eni(&e, &allow).is_err());
    }
}
