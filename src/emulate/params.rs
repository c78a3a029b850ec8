//! RPC-style request parameters: plain values, numbers, numbered lists (`Name.1`, `Name.2`) and
//! numbered structures (`Tag.1.Key`), validated with the cloud's error codes.

use crate::emulate::errors::{self, ApiError};
use std::collections::BTreeMap;

/// Parameters that are part of the protocol, not of the action (left out of ClientToken
/// fingerprints).
pub const COMMON: &[&str] = &[
    "Action",
    "Version",
    "AccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "SignatureType",
    "Timestamp",
    "Format",
    "SecurityToken",
    "ClientToken",
    "RegionId",
];

#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A value that is present and not empty.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn req(&self, name: &str) -> Result<&str, ApiError> {
        self.opt(name).ok_or_else(|| errors::missing(name))
    }

    /// An optional non-negative integer within `max`.
    pub fn num(&self, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => {
                let n: u64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| errors::invalid(name))?;
                if n > max {
                    return Err(errors::invalid(name));
                }
                Ok(Some(n))
            }
        }
    }

    /// `Prefix.N` values in N order. N must be 1..=`max`; anything else under the prefix is invalid.
    pub fn list(&self, prefix: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let mut items = BTreeMap::new();
        let dotted = format!("{prefix}.");
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&dotted) else {
                continue;
            };
            let n: usize = rest
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| errors::invalid(k))?;
            if v.is_empty() {
                return Err(errors::invalid(k));
            }
            items.insert(n, v.clone());
        }
        Ok(items.into_values().collect())
    }

    /// `Tag.N.Key` / `Tag.N.Value` pairs (N in 1..=20); a value needs its key.
    pub fn tags(&self, prefix: &str) -> Result<Vec<(String, String)>, ApiError> {
        let mut keys: BTreeMap<usize, (Option<String>, String)> = BTreeMap::new();
        let dotted = format!("{prefix}.");
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&dotted) else {
                continue;
            };
            let (n, field) = rest.split_once('.').ok_or_else(|| errors::invalid(k))?;
            let n: usize = n
                .parse()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| errors::invalid(k))?;
            let e = keys.entry(n).or_default();
            match field {
                "Key" => e.0 = Some(v.clone()),
                "Value" => e.1 = v.clone(),
                _ => return Err(errors::invalid(k)),
            }
        }
        keys.into_iter()
            .map(|(n, (k, v))| match k {
                Some(k) if !k.is_empty() => Ok((k, v)),
                _ => Err(errors::missing(&format!("{prefix}.{n}.Key"))),
            })
            .collect()
    }

    /// The action's own parameters in a canonical order, to tell a replay from a new request.
    pub fn fingerprint(&self) -> String {
        let mut v: Vec<&(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()))
            .collect();
        v.sort();
        v.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Opaque paging tokens (the offset, lightly disguised so clients treat it as opaque).
pub fn encode_token(offset: usize) -> String {
    format!("{:x}", (offset as u64) ^ 0x7e57_0000_0000)
}

pub fn decode_token(t: &str) -> Result<usize, ApiError> {
    u64::from_str_radix(t, 16)
        .ok()
        .map(|v| v ^ 0x7e57_0000_0000)
        .filter(|v| *v < 1 << 32)
        .map(|v| v as usize)
        .ok_or_else(|| errors::invalid("NextToken"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Params {
        Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn numbers_lists_and_tags() {
        let q = p(&[
            ("Count", "3"),
            ("Bad", "3x"),
            ("Neg", "-1"),
            ("Ip.2", "b"),
            ("Ip.1", "a"),
            ("Tag.1.Key", "k"),
            ("Tag.1.Value", "v"),
            ("Tag.2.Value", "orphan"),
        ]);
        assert_eq!(q.num("Count", 10).unwrap(), Some(3));
        assert_eq!(q.num("Count", 2).unwrap_err().code, "InvalidParameter");
        assert_eq!(
            q.num("Bad", 10).unwrap_err().message,
            "The specified parameter \"Bad\" is not valid."
        );
        assert!(q.num("Neg", 10).is_err());
        assert_eq!(q.num("Absent", 10).unwrap(), None);
        assert_eq!(q.list("Ip", 10).unwrap(), vec!["a", "b"]);
        assert_eq!(q.list("Ip", 1).unwrap_err().code, "InvalidParameter");
        assert_eq!(q.tags("Tag").unwrap_err().code, "MissingParameter");
        assert_eq!(
            p(&[("Tag.1.Key", "k")]).tags("Tag").unwrap(),
            vec![("k".into(), "".into())]
        );
        assert!(p(&[("Ip.0", "x")]).list("Ip", 10).is_err());
        assert!(p(&[("Ip.x", "x")]).list("Ip", 10).is_err());
        assert_eq!(q.req("Nope").unwrap_err().code, "MissingParameter");
        assert!(
            p(&[("A", "1"), ("ClientToken", "x")]).fingerprint() == p(&[("A", "1")]).fingerprint()
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(40)).unwrap(), 40);
        assert!(decode_token("zz").is_err());
        assert!(decode_token("").is_err());
    }
}
