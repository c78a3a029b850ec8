//! Where the access key comes from: static config, a JSON file (rotated by someone else), or the
//! instance RAM role via metadata (STS, expiring). Cached; refreshed before expiry. Secrets never
//! reach Debug output, logs or errors.

use crate::cloud::error::{CREDENTIALS, CloudError};
use crate::cloud::http::unix_now;
use crate::cloud::metadata::Metadata;
use crate::cloud::sign::parse_timestamp;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// Credentials are renewed when they expire within this many seconds.
pub const REFRESH_MARGIN_SECS: u64 = 600;

pub enum CredentialSource {
    Static {
        access_key: String,
        access_secret: String,
    },
    /// JSON `{"AccessKeyId","AccessKeySecret","SecurityToken"?,"Expiration"?}`; re-read when it
    /// changes and before it expires.
    File(PathBuf),
    /// `ram/security-credentials/<role>` of the instance metadata (the role listed at
    /// `ram/security-credentials/`); refreshed before `Expiration`.
    RamRole,
}

impl CredentialSource {
    /// The first that is there: a static key pair, a credential file, else the instance's RAM
    /// role (the daemon's config keys `access_key`/`access_secret`, `credential_path`).
    pub fn choose(
        key_pair: Option<(&str, &str)>,
        credential_path: Option<&std::path::Path>,
    ) -> CredentialSource {
        match (key_pair, credential_path) {
            (Some((ak, sk)), _) => CredentialSource::Static {
                access_key: ak.to_string(),
                access_secret: sk.to_string(),
            },
            (None, Some(p)) => CredentialSource::File(p.to_path_buf()),
            (None, None) => CredentialSource::RamRole,
        }
    }
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Static { access_key, .. } => f
                .debug_struct("Static")
                .field("access_key", access_key)
                .field("access_secret", &"<redacted>")
                .finish(),
            CredentialSource::File(p) => f.debug_tuple("File").field(p).finish(),
            CredentialSource::RamRole => f.write_str("RamRole"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Clone)]
struct Cached {
    creds: Credentials,
    /// Unix seconds; `None` for keys that do not expire.
    expires: Option<u64>,
    /// What the file looked like when read (modification time, length).
    file_stamp: Option<(Option<SystemTime>, u64)>,
}

pub struct CredentialProvider {
    source: CredentialSource,
    metadata: Option<Metadata>,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProvider")
            .field("source", &self.source)
            .finish()
    }
}

/// Whether credentials expiring at `expires` must be renewed at `now` (Unix seconds).
pub fn needs_refresh(expires: Option<u64>, now: u64) -> bool {
    expires.is_some_and(|e| e <= now.saturating_add(REFRESH_MARGIN_SECS))
}

/// Parses the STS / credential-file document. `what` names the source in errors.
pub fn parse_document(what: &str, text: &str) -> Result<(Credentials, Option<u64>), CloudError> {
    let bad = |m: String| CloudError::new(what, CREDENTIALS, m);
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(code) = v.get("Code").and_then(|c| c.as_str())
        && code != "Success"
    {
        return Err(bad(format!("the document says Code {code:?}")));
    }
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let access_key_id = s("AccessKeyId").ok_or_else(|| bad("no AccessKeyId".into()))?;
    let access_key_secret = s("AccessKeySecret").ok_or_else(|| bad("no AccessKeySecret".into()))?;
    let expires = match s("Expiration") {
        Some(e) => Some(
            parse_timestamp(&e)
                .ok_or_else(|| bad(format!("Expiration {e:?} is not YYYY-MM-DDThh:mm:ssZ")))?,
        ),
        None => None,
    };
    Ok((
        Credentials {
            access_key_id,
            access_key_secret,
            security_token: s("SecurityToken"),
        },
        expires,
    ))
}

impl CredentialProvider {
    /// `metadata` is used by [`CredentialSource::RamRole`] (the default endpoint when `None`).
    pub fn new(source: CredentialSource, metadata: Option<Metadata>) -> Self {
        CredentialProvider {
            source,
            metadata,
            cache: Mutex::new(None),
        }
    }

    /// Current credentials, fetched or re-read when needed. When a refresh fails but the cached
    /// ones are still valid, those are used (and the failure logged).
    pub fn get(&self) -> Result<Credentials, CloudError> {
        if let CredentialSource::Static {
            access_key,
            access_secret,
        } = &self.source
        {
            return Ok(Credentials {
                access_key_id: access_key.clone(),
                access_key_secret: access_secret.clone(),
                security_token: None,
            });
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        let stamp = self.file_stamp();
        if let Some(c) = cache.as_ref()
            && !needs_refresh(c.expires, now)
            && (stamp.is_none() || c.file_stamp == stamp)
        {
            return Ok(c.creds.clone());
        }
        match self.fetch() {
            Ok((creds, expires)) => {
                *cache = Some(Cached {
                    creds: creds.clone(),
                    expires,
                    file_stamp: stamp,
                });
                Ok(creds)
            }
            Err(e) => match cache.as_ref() {
                Some(c) if c.expires.is_none_or(|x| x > now) => {
                    log::warn!("refreshing credentials: {e}; using the cached ones");
                    Ok(c.creds.clone())
                }
                _ => Err(e),
            },
        }
    }

    fn file_stamp(&self) -> Option<(Option<SystemTime>, u64)> {
        match &self.source {
            CredentialSource::File(p) => std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len())),
            _ => None,
        }
    }

    fn fetch(&self) -> Result<(Credentials, Option<u64>), CloudError> {
        match &self.source {
            CredentialSource::Static { .. } => Err(CloudError::new(
                "credentials",
                CREDENTIALS,
                "static credentials are not fetched",
            )),
            CredentialSource::File(p) => {
                let what = format!("credentials {}", p.display());
                let text = std::fs::read_to_string(p)
                    .map_err(|e| CloudError::new(&what, CREDENTIALS, format!("read: {e}")))?;
                parse_document(&what, &text)
            }
            CredentialSource::RamRole => {
                let default;
                let md = match &self.metadata {
                    Some(m) => m,
                    None => {
                        default = Metadata::new("");
                        &default
                    }
                };
                let roles = md.list("ram/security-credentials/")?;
                let role = roles.first().ok_or_else(|| {
                    CloudError::new(
                        "metadata ram/security-credentials/",
                        CREDENTIALS,
                        "the instance has no RAM role attached",
                    )
                })?;
                let path = format!("ram/security-credentials/{role}");
                parse_document(&format!("metadata {path}"), &md.get(&path)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"AccessKeyId":"STS.key","AccessKeySecret":"very-secret",
        "SecurityToken":"tok-secret","Expiration":"2026-11-21T12:00:00Z","Code":"Success"}"#;

    #[test]
    fn documents_parse_and_refresh_is_timed() {
        let (c, exp) = parse_document("x", DOC).unwrap();
        assert_eq!(c.access_key_id, "STS.key");
        assert_eq!(c.security_token.as_deref(), Some("tok-secret"));
        let exp = exp.unwrap();
        assert_eq!(exp, parse_timestamp("2026-11-21T12:00:00Z").unwrap());
        assert!(!needs_refresh(Some(exp), exp - REFRESH_MARGIN_SECS - 1));
        assert!(needs_refresh(Some(exp), exp - REFRESH_MARGIN_SECS));
        assert!(!needs_refresh(None, u64::MAX));
        let (plain, none) =
            parse_document("x", r#"{"AccessKeyId":"a","AccessKeySecret":"b"}"#).unwrap();
        assert_eq!((plain.security_token, none), (None, None));
        for bad in [
            "nope",
            r#"{"AccessKeyId":"a"}"#,
            r#"{"AccessKeyId":"a","AccessKeySecret":"b","Expiration":"tomorrow"}"#,
            r#"{"Code":"Failed","AccessKeyId":"a","AccessKeySecret":"b"}"#,
        ] {
            let e = parse_document("file f", bad).unwrap_err();
            assert_eq!(e.code, CREDENTIALS);
            assert!(!e.to_string().contains("very-secret"));
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let (c, _) = parse_document("x", DOC).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("STS.key") && !d.contains("very-secret") && !d.contains("tok-secret"));
        let p = CredentialProvider::new(
            CredentialSource::Static {
                access_key: "LTAIkey".into(),
                access_secret: "very-secret".into(),
            },
            None,
        );
        let d = format!("{p:?}");
        assert!(d.contains("LTAIkey") && !d.contains("very-secret"), "{d}");
        assert_eq!(p.get().unwrap().access_key_secret, "very-secret");
    }

    #[test]
    fn file_is_reread_when_it_changes() {
        let path = std::env::temp_dir().join(format!("terway-cred-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"AccessKeyId":"one","AccessKeySecret":"s1"}"#).unwrap();
        let p = CredentialProvider::new(CredentialSource::File(path.clone()), None);
        assert_eq!(p.get().unwrap().access_key_id, "one");
        // A different length changes the stamp even within the mtime granularity.
        std::fs::write(&path, r#"{"AccessKeyId":"two-two","AccessKeySecret":"s2"}"#).unwrap();
        assert_eq!(p.get().unwrap().access_key_id, "two-two");
        // A broken rewrite keeps the still-valid cached key.
        std::fs::write(&path, "{").unwrap();
        assert_eq!(p.get().unwrap().access_key_id, "two-two");
        std::fs::remove_file(&path).unwrap();
        let missing = CredentialProvider::new(CredentialSource::File(path), None);
        assert_eq!(missing.get().unwrap_err().code, CREDENTIALS);
    }
}
