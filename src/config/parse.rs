//! The lenient reading of config files: typed accessors that record a problem per key instead
//! of failing, Go-style durations, `#` annotations, the distance behind "did you mean" hints.

use super::Problem;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Typed accessors that record a problem instead of failing.
pub(super) struct Parser<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) problems: Vec<Problem>,
}

impl Parser<'_> {
    pub(super) fn problem(&mut self, key: &str, msg: String) {
        self.problems.push(Problem {
            key: key.into(),
            msg,
            warning: false,
        });
    }

    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        debug_assert!(
            super::support::lookup(key).is_some(),
            "{key} is read but not in the support table"
        );
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                let msg = format!("expected a string, got {other}");
                self.problem(key, msg);
                None
            }
        }
    }

    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if s.is_empty() {
            self.problem(key, "must not be empty".into());
            return None;
        }
        Some(PathBuf::from(s))
    }

    /// `IP:port`, e.g. `127.0.0.1:9253` or `[::1]:9253`.
    pub(super) fn socket_addr(&mut self, key: &str) -> Option<std::net::SocketAddr> {
        let s = self.string(key)?;
        match s.trim().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid address \"{s}\" (expected IP:port, e.g. 127.0.0.1:9253)"),
                );
                None
            }
        }
    }

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            other => {
                let msg = format!("expected true or false, got {other}");
                self.problem(key, msg);
                None
            }
        }
    }

    /// Upstream configs carry numbers both as JSON numbers and as strings.
    pub(super) fn uint(&mut self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let parsed = match v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse::<u32>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let msg = format!("expected a non-negative whole number, got {v}");
            self.problem(key, msg);
        }
        parsed
    }

    pub(super) fn duration(&mut self, key: &str) -> Option<Duration> {
        let s = self.string(key)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    pub(super) fn cidr(&mut self, key: &str) -> Option<Ipv4Network> {
        let s = self.string(key)?;
        match s.parse::<Ipv4Network>() {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(key, format!("invalid IPv4 CIDR \"{s}\": {e}"));
                None
            }
        }
    }

    pub(super) fn cidr_v6(&mut self, key: &str) -> Option<Ipv6Network> {
        let s = self.string(key)?;
        match s.parse::<Ipv6Network>() {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(key, format!("invalid IPv6 CIDR \"{s}\": {e}"));
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?.clone();
        let items = match &v {
            Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
            _ => None,
        };
        if items.is_none() {
            self.problem(key, format!("expected a list of strings, got {v}"));
        }
        items
    }

    pub(super) fn string_map(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
        let v = self.get(key)?.clone();
        let items = match &v {
            Value::Object(m) => m
                .iter()
                .map(|(k, x)| x.as_str().map(|s| (k.clone(), s.to_string())))
                .collect(),
            _ => None,
        };
        if items.is_none() {
            self.problem(key, format!("expected an object of strings, got {v}"));
        }
        items
    }

    pub(super) fn vswitches(&mut self) -> Option<BTreeMap<String, Vec<String>>> {
        let v = self.get("vswitches")?.clone();
        let items: Option<BTreeMap<String, Vec<String>>> = match &v {
            Value::Object(m) => m
                .iter()
                .map(|(zone, ids)| {
                    let ids = ids.as_array()?;
                    let ids: Option<Vec<String>> =
                        ids.iter().map(|x| x.as_str().map(String::from)).collect();
                    Some((zone.clone(), ids?))
                })
                .collect(),
            _ => None,
        };
        match items {
            None => self.problem(
                "vswitches",
                format!("expected {{\"<zone>\": [\"vsw-…\", …]}}, got {v}"),
            ),
            Some(ref m) => {
                for id in m.values().flatten() {
                    if !id.starts_with("vsw-") {
                        self.problem(
                            "vswitches",
                            format!("\"{id}\" is not a vSwitch id (they start with vsw-)"),
                        );
                    }
                }
            }
        }
        items
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses Go-style durations as upstream configs use them: "30s", "5m", "1h30m", "500ms".
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("invalid duration \"{s}\" (examples: 30s, 5m, 1h30m)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(bad()),
        };
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("duration \"{s}\" is out of range"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Removes `# …` annotations (outside strings) so configs copied from the docs still parse.
pub(super) fn strip_hash_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut cut = line.len();
        for (i, ch) in line.char_indices() {
            match ch {
                _ if escaped => escaped = false,
                '\\' if in_str => escaped = true,
                '"' => in_str = !in_str,
                '#' if !in_str => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}
