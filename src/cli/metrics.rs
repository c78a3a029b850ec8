//! `terway metrics`: the daemon's metrics, as Prometheus would scrape them, from its metrics
//! socket.

use crate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH, METRICS_SOCKET_NAME};
use crate::{Result, output};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The daemon's metrics socket; by default the one its config (--config) names, else
    /// /run/terway/metrics.sock.
    #[arg(long, env = "TERWAY_METRICS_SOCKET")]
    pub metrics_socket: Option<PathBuf>,
    /// The daemon config to find the metrics socket in (`metrics_socket`, or metrics.sock beside
    /// `socket_path`); not needed with --metrics-socket.
    #[arg(long, short, env = "TERWAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Where to scrape: the flag, else the config's socket when the config exists, else the default.
pub fn socket(a: &MetricsArgs) -> Result<PathBuf> {
    if let Some(p) = &a.metrics_socket {
        return Ok(p.clone());
    }
    if a.config.exists() {
        return Ok(Config::load(&a.config)?.metrics_socket_path());
    }
    Ok(Path::new(DEFAULT_SOCKET_PATH).with_file_name(METRICS_SOCKET_NAME))
}

pub fn run(a: &MetricsArgs) -> Result<ExitCode> {
    let text = crate::metrics::http::scrape_unix(&socket(a)?, Duration::from_secs(15))?;
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_comes_from_the_flag_the_config_or_the_default() {
        let dir = std::env::temp_dir().join(format!("terway-cli-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = |flag: Option<&str>, config: &Path| MetricsArgs {
            metrics_socket: flag.map(PathBuf::from),
            config: config.to_path_buf(),
        };
        let missing = dir.join("missing.json");
        assert_eq!(
            socket(&args(None, &missing)).unwrap(),
            Path::new("/run/terway/metrics.sock")
        );
        assert_eq!(
            socket(&args(Some("/x/m.sock"), &missing)).unwrap(),
            Path::new("/x/m.sock")
        );
        let cfg = dir.join("eni.json");
        std::fs::write(
            &cfg,
            r#"{"daemon_mode":"VPC","pod_cidr":"10.1.0.0/24","socket_path":"/run/tw/t.sock"}"#,
        )
        .unwrap();
        assert_eq!(
            socket(&args(None, &cfg)).unwrap(),
            Path::new("/run/tw/metrics.sock")
        );
        std::fs::write(&cfg, "{").unwrap();
        assert!(
            socket(&args(None, &cfg)).is_err(),
            "a broken config is said"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
