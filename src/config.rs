//! Configuration: defaults, then `config/pdp.toml`, then `PDP_*` variables.
//!
//! Resolved once, in two steps (raw strings, then typed values), before
//! anything binds. Every bad key is reported, not just the first; `main`
//! exits 64 on any. Tests pass their own variables as a map instead of
//! touching the process environment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::decisions::{self, Destination, Mask};
use subtle::ConstantTimeEq;

/// One setting: its key, default and meaning (the table in the README and
/// the comments in `config/pdp.toml` say the same).
struct Key {
    name: &'static str,
    default: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        name: "host",
        default: "0.0.0.0",
    },
    Key {
        name: "port",
        default: "7766",
    },
    Key {
        name: "api_key",
        default: "",
    },
    Key {
        name: "debug",
        default: "false",
    },
    Key {
        name: "data_file",
        default: "",
    },
    Key {
        name: "log_level",
        default: "info",
    },
    Key {
        name: "log_format",
        default: "text",
    },
    Key {
        name: "max_body_bytes",
        default: "1048576",
    },
    Key {
        name: "max_bulk_items",
        default: "10000",
    },
    Key {
        name: "max_connections",
        default: "10000",
    },
    Key {
        name: "header_read_timeout",
        default: "10s",
    },
    Key {
        name: "shutdown_grace",
        default: "20s",
    },
    Key {
        name: "control_plane",
        default: "https://api.permit.io",
    },
    Key {
        name: "upstream_url",
        default: "",
    },
    Key {
        name: "upstream_allow_http",
        default: "false",
    },
    Key {
        name: "hub",
        default: "false",
    },
    Key {
        name: "sync_interval",
        default: "60s",
    },
    Key {
        name: "sync_request_timeout",
        default: "30s",
    },
    Key {
        name: "sync_deadline",
        default: "30m",
    },
    Key {
        name: "backup_dir",
        default: "",
    },
    Key {
        name: "max_staleness",
        default: "",
    },
    Key {
        name: "rate_limit_overall",
        default: "2500",
    },
    Key {
        name: "rate_limit_facts",
        default: "1500",
    },
    Key {
        name: "rate_limit_schema",
        default: "500",
    },
    Key {
        name: "local_facts_wait_timeout",
        default: "10s",
    },
    Key {
        name: "decision_logs",
        default: "",
    },
    Key {
        name: "decision_logs_file",
        default: "",
    },
    Key {
        name: "decision_logs_file_max_bytes",
        default: "104857600",
    },
    Key {
        name: "decision_logs_file_keep",
        default: "5",
    },
    Key {
        name: "decision_logs_buffer_events",
        default: "100000",
    },
    Key {
        name: "decision_logs_buffer_bytes",
        default: "33554432",
    },
    Key {
        name: "decision_logs_min_delay",
        default: "1s",
    },
    Key {
        name: "decision_logs_max_delay",
        default: "10s",
    },
    Key {
        name: "decision_logs_mask",
        default: "",
    },
];

/// The environment API key. Its `Debug` is redacted and its memory wiped on
/// drop (`secrecy`), and a presented key is compared with it through
/// fixed-length digests in constant time, so the comparison reveals neither
/// its bytes nor its length.
#[derive(Clone)]
pub struct ApiKey {
    secret: SecretString,
    digest: [u8; 32],
}

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        let key: String = key.into();
        let digest = *blake3::hash(key.as_bytes()).as_bytes();
        ApiKey {
            secret: SecretString::from(key),
            digest,
        }
    }

    /// The key itself, to send to the control plane.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Whether `presented` is this key.
    pub fn matches(&self, presented: &[u8]) -> bool {
        blake3::hash(presented)
            .as_bytes()
            .ct_eq(&self.digest)
            .into()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &ApiKey) -> bool {
        self.matches(other.expose().as_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// The key callers must present, and the environment key used to sync.
    pub api_key: Option<ApiKey>,
    pub debug: bool,
    /// Serve this data document instead of syncing from the control plane.
    pub data_file: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub max_bulk_items: usize,
    /// Connections served at once; past it, a few more are kept for probes.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub control_plane: String,
    /// Follow this hub PDP or bundle file instead of the control plane.
    pub upstream_url: Option<String>,
    /// Serve `GET /v1/snapshot` to followers.
    pub hub: bool,
    pub sync_interval: Duration,
    pub sync_request_timeout: Duration,
    pub sync_deadline: Duration,
    pub backup_dir: Option<PathBuf>,
    pub max_staleness: Option<Duration>,
    /// Requests per minute; 0 = unlimited.
    pub rate_limit_overall: u32,
    pub rate_limit_facts: u32,
    pub rate_limit_schema: u32,
    /// How long a write through the facts proxy waits to be served
    /// locally, when its request has no `X-Wait-Timeout`.
    pub local_facts_wait_timeout: Duration,
    /// Where decisions are logged; `None`: not at all. Unset, the control
    /// plane when syncing from it, as Permit's PDP does.
    pub decision_logs: Option<Destination>,
    pub decision_log_settings: decisions::Settings,
}

/// What the PDP serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The example environment compiled into the binary.
    Embedded,
    File(PathBuf),
    ControlPlane,
    /// A follower of a hub PDP or a bundle file (`PDP_UPSTREAM_URL`).
    Upstream(String),
}

impl Config {
    /// Where decisions come from: a data file if one is named, else the
    /// control plane if there is a key to sync with, else the embedded example.
    pub fn mode(&self) -> Mode {
        match (&self.data_file, &self.upstream_url, &self.api_key) {
            (Some(f), _, _) => Mode::File(f.clone()),
            (None, Some(url), _) => Mode::Upstream(url.clone()),
            (None, None, Some(_)) => Mode::ControlPlane,
            (None, None, None) => Mode::Embedded,
        }
    }

    /// Defaults, overridden by `file` (TOML) if given, overridden by `PDP_*`
    /// entries of `env`.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, Vec<String>> {
        let mut raw: BTreeMap<&'static str, String> = KEYS
            .iter()
            .map(|k| (k.name, k.default.to_owned()))
            .collect();
        let mut errors = Vec::new();
        // Keys the file or the environment set, even to an empty value.
        let mut given = BTreeSet::new();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => merge_toml(&text, path, &mut raw, &mut given, &mut errors),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        for k in KEYS {
            if let Some(v) = env.get(&format!("PDP_{}", k.name.to_uppercase())) {
                raw.insert(k.name, v.clone());
                given.insert(k.name);
            }
        }
        // A key that is given but empty (an empty Kubernetes secret) is a
        // mistake, not a request for the embedded example data.
        if given.contains("api_key") && raw.get("api_key").is_some_and(|k| k.trim().is_empty()) {
            errors.push(
                "PDP_API_KEY / `api_key` is set but empty; give the environment API key, \
                 or unset it to serve the embedded example"
                    .to_owned(),
            );
        }
        let config = Parser {
            raw: &raw,
            errors: &mut errors,
        }
        .parse();
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }

    /// The config file to read: `PDP_CONFIG_FILE` if set, else
    /// `config/pdp.toml` when it exists.
    pub fn default_file(env: &HashMap<String, String>) -> Option<PathBuf> {
        if let Some(p) = env.get("PDP_CONFIG_FILE") {
            return Some(PathBuf::from(p));
        }
        let p = PathBuf::from("config/pdp.toml");
        p.exists().then_some(p)
    }
}

fn merge_toml(
    text: &str,
    path: &Path,
    raw: &mut BTreeMap<&'static str, String>,
    given: &mut BTreeSet<&'static str>,
    errors: &mut Vec<String>,
) {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    for (key, value) in table {
        let Some(k) = KEYS.iter().find(|k| k.name == key) else {
            errors.push(format!("{}: unknown key `{key}`", path.display()));
            continue;
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                errors.push(format!(
                    "{}: `{key}` cannot be {}",
                    path.display(),
                    other.type_str()
                ));
                continue;
            }
        };
        raw.insert(k.name, text);
        given.insert(k.name);
    }
}

/// Parses a duration such as `250ms`, `10s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The longest duration any setting takes: past it a value is a typo, and
/// adding one to an `Instant` could overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

struct Parser<'a> {
    raw: &'a BTreeMap<&'static str, String>,
    errors: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn get(&self, key: &str) -> &str {
        self.raw.get(key).map(String::as_str).unwrap_or_default()
    }

    fn fail<T>(&mut self, key: &str, want: &str) -> Option<T> {
        let env = format!("PDP_{}", key.to_uppercase());
        self.errors.push(format!(
            "{env} / `{key}`: `{}` is not {want}",
            self.get(key)
        ));
        None
    }

    fn value<T: std::str::FromStr>(&mut self, key: &str, want: &str) -> Option<T> {
        match self.get(key).trim().parse() {
            Ok(v) => Some(v),
            Err(_) => self.fail(key, want),
        }
    }

    fn flag(&mut self, key: &str) -> Option<bool> {
        match self.get(key).trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" | "" => Some(false),
            _ => self.fail(key, "a boolean (true/false)"),
        }
    }

    fn duration(&mut self, key: &str) -> Option<Duration> {
        match parse_duration(self.get(key)) {
            Some(d) if d <= MAX_DURATION => Some(d),
            Some(_) => self.fail(key, "a duration of at most 365 days (8760h)"),
            None => self.fail(key, "a duration like 500ms, 10s, 5m"),
        }
    }

    fn positive_duration(&mut self, key: &str) -> Option<Duration> {
        match self.duration(key)? {
            d if d.is_zero() => self.fail(key, "a duration above zero"),
            d => Some(d),
        }
    }

    fn optional<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Self, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.get(key).trim().is_empty() {
            Some(None)
        } else {
            f(self, key).map(Some)
        }
    }

    fn parse(mut self) -> Option<Config> {
        let host = self.value("host", "an IP address");
        let port = self.value("port", "a port number (0-65535)");
        let debug = self.flag("debug");
        let log_level = self.get("log_level").trim().to_owned();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            self.fail::<()>(
                "log_level",
                "a log level or filter (error, warn, info, debug, trace)",
            );
        }
        let log_format = match self.get("log_format").trim() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => self.fail("log_format", "`text` or `json`"),
        };
        let max_body_bytes = match self.value::<usize>("max_body_bytes", "a number of bytes") {
            Some(0) => self.fail("max_body_bytes", "above zero"),
            v => v,
        };
        let max_bulk_items = match self.value::<usize>("max_bulk_items", "a count") {
            Some(0) => self.fail("max_bulk_items", "above zero"),
            v => v,
        };
        let max_connections = match self.value::<usize>("max_connections", "a count") {
            Some(0) => self.fail("max_connections", "above zero"),
            v => v,
        };
        let header_read_timeout = self.positive_duration("header_read_timeout");
        let shutdown_grace = self.duration("shutdown_grace");
        let control_plane = self
            .get("control_plane")
            .trim()
            .trim_end_matches('/')
            .to_owned();
        match reqwest::Url::parse(&control_plane) {
            Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
            // The key travels in a header: in clear only to this machine
            // (as tests and a local proxy do).
            Ok(url) if url.scheme() == "http" && is_loopback(&url) => {}
            Ok(url) if url.scheme() == "http" => {
                self.fail::<()>(
                    "control_plane",
                    "an https:// URL (http:// only to a loopback address: the API key is sent with every request)",
                );
            }
            _ => {
                self.fail::<()>("control_plane", "an https:// URL");
            }
        }
        let sync_interval = self.positive_duration("sync_interval");
        let sync_request_timeout = self.positive_duration("sync_request_timeout");
        let sync_deadline = self.positive_duration("sync_deadline");
        let max_staleness = self.optional("max_staleness", |p, k| p.positive_duration(k));
        let rate_limit_overall =
            self.value("rate_limit_overall", "requests per minute (0 = unlimited)");
        let rate_limit_facts =
            self.value("rate_limit_facts", "requests per minute (0 = unlimited)");
        let rate_limit_schema =
            self.value("rate_limit_schema", "requests per minute (0 = unlimited)");
        let local_facts_wait_timeout = self.duration("local_facts_wait_timeout");
        let text = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_owned());
        let api_key = text(self.get("api_key")).map(ApiKey::new);
        if api_key
            .as_ref()
            .is_some_and(|k| !k.expose().bytes().all(|b| b.is_ascii_graphic()))
        {
            // Not sendable as a bearer token. Not echoed: it is a secret.
            self.errors.push(
                "PDP_API_KEY / `api_key`: the key may hold only printable ASCII without spaces"
                    .to_owned(),
            );
        }
        let data_file = text(self.get("data_file")).map(PathBuf::from);
        let backup_dir = text(self.get("backup_dir")).map(PathBuf::from);
        let upstream_url =
            text(self.get("upstream_url")).map(|u| u.trim_end_matches('/').to_owned());
        let allow_http = self.flag("upstream_allow_http");
        if let Some(url) = &upstream_url {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
                // A bundle file is fetched without the key (its MAC is what
                // proves it); a hub is sent the key, in clear only to this
                // machine or where the operator says the network is private.
                Ok(u)
                    if u.scheme() == "http"
                        && u.host().is_some()
                        && (is_loopback(&u)
                            || allow_http == Some(true)
                            || matches!(
                                crate::sync::Target::of(url),
                                crate::sync::Target::File(_)
                            )) => {}
                Ok(u) if u.scheme() == "http" && u.host().is_some() => {
                    self.fail::<()>(
                        "upstream_url",
                        "an https:// URL for a hub (http:// only to a loopback address, or with PDP_UPSTREAM_ALLOW_HTTP=true on a network you trust: the API key is sent with every request)",
                    );
                }
                _ => {
                    self.fail::<()>(
                        "upstream_url",
                        "an http:// or https:// URL: a PDP (http://pdp-hub:7766) or a bundle file",
                    );
                }
            }
            if data_file.is_some() {
                self.errors.push(
                    "PDP_UPSTREAM_URL and PDP_DATA_FILE name two sources of the snapshot; set one"
                        .to_owned(),
                );
            }
            if api_key.is_none() {
                self.errors.push(
                    "PDP_UPSTREAM_URL needs PDP_API_KEY: bundles are authenticated with it"
                        .to_owned(),
                );
            }
        }
        let hub = self.flag("hub");
        if hub == Some(true) && (data_file.is_some() || api_key.is_none()) {
            self.errors.push(
                "PDP_HUB serves what is synced from the control plane or an upstream: it needs PDP_API_KEY and no PDP_DATA_FILE"
                    .to_owned(),
            );
        }
        // Decision logs go to the control plane, or to a hub a follower
        // reads; a bundle file's server takes none.
        let syncing = data_file.is_none()
            && api_key.is_some()
            && upstream_url
                .as_deref()
                .is_none_or(|u| matches!(crate::sync::Target::of(u), crate::sync::Target::Hub(_)));
        let decision_logs = self.decision_logs(syncing);
        let decision_log_settings = self.decision_log_settings();
        Some(Config {
            host: host?,
            port: port?,
            api_key,
            debug: debug?,
            data_file,
            log_level,
            log_format: log_format?,
            max_body_bytes: max_body_bytes?,
            max_bulk_items: max_bulk_items?,
            max_connections: max_connections?,
            header_read_timeout: header_read_timeout?,
            shutdown_grace: shutdown_grace?,
            control_plane,
            upstream_url,
            hub: hub?,
            sync_interval: sync_interval?,
            sync_request_timeout: sync_request_timeout?,
            sync_deadline: sync_deadline?,
            backup_dir,
            max_staleness: max_staleness?,
            rate_limit_overall: rate_limit_overall?,
            rate_limit_facts: rate_limit_facts?,
            rate_limit_schema: rate_limit_schema?,
            local_facts_wait_timeout: local_facts_wait_timeout?,
            decision_logs: decision_logs?,
            decision_log_settings: decision_log_settings?,
        })
    }

    /// `decision_logs`: `off`, `control-plane`, `stdout` or `file`; unset,
    /// the control plane when `syncing` from it.
    fn decision_logs(&mut self, syncing: bool) -> Option<Option<Destination>> {
        let key = "decision_logs";
        let file = self.get("decision_logs_file").trim().to_owned();
        match self.get(key).trim().to_ascii_lowercase().as_str() {
            "" if syncing => Some(Some(Destination::ControlPlane)),
            "" | "off" => Some(None),
            "control-plane" if syncing => Some(Some(Destination::ControlPlane)),
            "control-plane" => self.fail(
                key,
                "possible here: `control-plane` needs PDP_API_KEY and a control plane or hub to send to (no PDP_DATA_FILE, no bundle file as PDP_UPSTREAM_URL)",
            ),
            "stdout" => Some(Some(Destination::Stdout)),
            "file" if file.is_empty() => {
                self.fail(key, "possible without PDP_DECISION_LOGS_FILE, the file to write")
            }
            "file" => {
                let max_bytes = self.count("decision_logs_file_max_bytes")?;
                let keep = self.count("decision_logs_file_keep")?;
                Some(Some(Destination::File {
                    path: PathBuf::from(file),
                    max_bytes,
                    keep,
                }))
            }
            _ => self.fail(key, "`off`, `control-plane`, `stdout` or `file`"),
        }
    }

    fn decision_log_settings(&mut self) -> Option<decisions::Settings> {
        let buffer_events = self.count("decision_logs_buffer_events");
        let buffer_bytes = self.count("decision_logs_buffer_bytes");
        let min_delay = self.positive_duration("decision_logs_min_delay");
        let max_delay = self.positive_duration("decision_logs_max_delay");
        if let (Some(min), Some(max)) = (min_delay, max_delay) {
            if min > max {
                self.fail::<()>(
                    "decision_logs_max_delay",
                    "at least PDP_DECISION_LOGS_MIN_DELAY",
                );
            }
        }
        let mut masks = Vec::new();
        let pointers = self.get("decision_logs_mask").to_owned();
        for pointer in pointers.split(',') {
            let pointer = pointer.trim();
            if pointer.is_empty() {
                continue;
            }
            match Mask::parse(pointer) {
                Ok(m) => masks.push(m),
                Err(e) => self.errors.push(format!(
                    "PDP_DECISION_LOGS_MASK / `decision_logs_mask`: {e}"
                )),
            }
        }
        Some(decisions::Settings {
            buffer_events: buffer_events?,
            buffer_bytes: buffer_bytes?,
            min_delay: min_delay?,
            max_delay: max_delay?,
            masks,
            ..decisions::Settings::default()
        })
    }

    /// A count above zero.
    fn count(&mut self, key: &str) -> Option<usize> {
        match self.value::<usize>(key, "a count")? {
            0 => self.fail(key, "above zero"),
            n => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.port, 7766);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.api_key, None);
        assert_eq!(c.mode(), Mode::Embedded);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.sync_interval, Duration::from_secs(60));
        assert_eq!(c.max_staleness, None);
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pdp.toml");
        std::fs::write(&file, "port = 9000\ndebug = true\nlog_format = \"json\"\n").unwrap();
        let c = Config::load(
            Some(&file),
            &env(&[("PDP_PORT", "9100"), ("PDP_API_KEY", "k")]),
        )
        .unwrap();
        assert_eq!(c.port, 9100);
        assert!(c.debug);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.mode(), Mode::ControlPlane);
        let c = Config::load(
            Some(&file),
            &env(&[("PDP_DATA_FILE", "x.json"), ("PDP_API_KEY", "k")]),
        )
        .unwrap();
        assert_eq!(c.mode(), Mode::File("x.json".into()));
    }

    #[test]
    fn every_bad_key_is_reported() {
        let errors = Config::load(
            None,
            &env(&[
                ("PDP_PORT", "70000"),
                ("PDP_HOST", "not-an-ip"),
                ("PDP_DEBUG", "maybe"),
                ("PDP_MAX_BODY_BYTES", "0"),
                ("PDP_SYNC_INTERVAL", "soon"),
                ("PDP_LOG_FORMAT", "xml"),
                ("PDP_CONTROL_PLANE", "ftp://x"),
            ]),
        )
        .unwrap_err();
        for key in [
            "PDP_PORT",
            "PDP_HOST",
            "PDP_DEBUG",
            "PDP_MAX_BODY_BYTES",
            "PDP_SYNC_INTERVAL",
            "PDP_LOG_FORMAT",
            "PDP_CONTROL_PLANE",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} missing from {errors:?}"
            );
        }
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn an_api_key_set_but_empty_is_an_error_not_the_example() {
        for blank in ["", "  "] {
            let errors = Config::load(None, &env(&[("PDP_API_KEY", blank)])).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("PDP_API_KEY"), "{errors:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pdp.toml");
        std::fs::write(&file, "api_key = \"\"\n").unwrap();
        let errors = Config::load(Some(&file), &env(&[])).unwrap_err();
        assert!(errors[0].contains("set but empty"), "{errors:?}");
        // A key in the environment overrides an empty one in the file.
        let c = Config::load(Some(&file), &env(&[("PDP_API_KEY", "k")])).unwrap();
        assert_eq!(c.mode(), Mode::ControlPlane);
    }

    #[test]
    fn a_follower_names_its_upstream_and_a_hub_syncs_itself() {
        let key = ("PDP_API_KEY", "permit_key_x");
        let c = Config::load(
            None,
            &env(&[
                key,
                ("PDP_UPSTREAM_URL", "http://pdp-hub:7766/"),
                ("PDP_UPSTREAM_ALLOW_HTTP", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mode(), Mode::Upstream("http://pdp-hub:7766".into()));
        // The key goes to a hub in clear only to this machine or when
        // allowed; a bundle file is fetched without it.
        for url in [
            "http://127.0.0.1:7766",
            "https://pdp-hub:7766",
            "http://bundles.internal/b.bin",
        ] {
            assert!(
                Config::load(None, &env(&[key, ("PDP_UPSTREAM_URL", url)])).is_ok(),
                "{url}"
            );
        }
        assert_eq!(c.decision_logs, Some(Destination::ControlPlane));
        // A bundle file takes no decision logs.
        let c = Config::load(
            None,
            &env(&[key, ("PDP_UPSTREAM_URL", "https://cdn.example/b.bin")]),
        )
        .unwrap();
        assert_eq!(c.decision_logs, None);
        assert!(
            Config::load(None, &env(&[key, ("PDP_HUB", "true")]))
                .unwrap()
                .hub
        );

        for (pairs, names) in [
            (
                vec![
                    key,
                    ("PDP_UPSTREAM_URL", "http://h:7766"),
                    ("PDP_DATA_FILE", "env.json"),
                ],
                &["PDP_UPSTREAM_URL", "PDP_DATA_FILE"][..],
            ),
            (
                vec![("PDP_UPSTREAM_URL", "http://h:7766")],
                &["PDP_API_KEY"],
            ),
            (
                vec![key, ("PDP_UPSTREAM_URL", "ftp://h/b.bin")],
                &["PDP_UPSTREAM_URL"],
            ),
            (
                vec![key, ("PDP_UPSTREAM_URL", "http://pdp-hub:7766")],
                &["PDP_UPSTREAM_ALLOW_HTTP"],
            ),
            (vec![("PDP_HUB", "true")], &["PDP_HUB"]),
            (
                vec![key, ("PDP_HUB", "true"), ("PDP_DATA_FILE", "env.json")],
                &["PDP_HUB"],
            ),
            (
                vec![
                    key,
                    ("PDP_UPSTREAM_URL", "https://cdn.example/b.bin"),
                    ("PDP_DECISION_LOGS", "control-plane"),
                ],
                &["PDP_DECISION_LOGS"],
            ),
        ] {
            let errors = Config::load(None, &env(&pairs)).unwrap_err();
            for name in names {
                assert!(
                    errors.iter().any(|e| e.contains(name)),
                    "{pairs:?}: {errors:?}"
                );
            }
        }
    }

    #[test]
    fn the_key_is_never_printed_and_matches_only_itself() {
        let c = Config::load(None, &env(&[("PDP_API_KEY", "permit_key_s3cr3t")])).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        let key = c.api_key.unwrap();
        assert!(key.matches(b"permit_key_s3cr3t"));
        for other in [
            "",
            "permit_key_s3cr3",
            "permit_key_s3cr3tt",
            "PERMIT_KEY_S3CR3T",
        ] {
            assert!(!key.matches(other.as_bytes()), "{other}");
        }
        let errors = Config::load(None, &env(&[("PDP_API_KEY", "two words")])).unwrap_err();
        assert!(errors[0].contains("printable ASCII"), "{errors:?}");
        assert!(!errors[0].contains("two words"), "the key is not echoed");
    }

    #[test]
    fn the_control_plane_is_https_or_on_this_machine() {
        for ok in [
            "https://api.permit.io",
            "http://127.0.0.1:9",
            "http://localhost:8080/",
            "http://[::1]:8080",
        ] {
            let c = Config::load(None, &env(&[("PDP_CONTROL_PLANE", ok)]));
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        for bad in [
            "http://api.permit.io",
            "http://10.0.0.1",
            "ftp://x",
            "https://",
            "api.permit.io",
        ] {
            let errors = Config::load(None, &env(&[("PDP_CONTROL_PLANE", bad)])).unwrap_err();
            assert!(
                errors[0].starts_with("PDP_CONTROL_PLANE"),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pdp.toml");
        std::fs::write(&file, "prot = 1\n").unwrap();
        let errors = Config::load(Some(&file), &env(&[])).unwrap_err();
        assert!(errors[0].contains("unknown key `prot`"), "{errors:?}");
    }

    #[test]
    fn the_shipped_config_file_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pdp.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        for k in KEYS {
            assert!(
                text.contains(&format!("{} =", k.name)),
                "config/pdp.toml lacks `{}`",
                k.name
            );
        }
        Config::load(Some(&path), &env(&[])).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("3 weeks"), None);
        assert_eq!(
            parse_duration("100000000000000000000000"),
            None,
            "not a panic"
        );
        assert_eq!(parse_duration("30000000000000000h"), None, "not a panic");
    }

    #[test]
    fn durations_past_a_year_are_refused_not_a_panic() {
        let errors = Config::load(
            None,
            &env(&[
                ("PDP_SYNC_INTERVAL", "100000000000000000000000"),
                ("PDP_SHUTDOWN_GRACE", "1e23"),
                ("PDP_SYNC_DEADLINE", "3000000000000000h"),
                ("PDP_MAX_STALENESS", "366d"),
                ("PDP_HEADER_READ_TIMEOUT", "8761h"),
            ]),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        let c = Config::load(None, &env(&[("PDP_SYNC_DEADLINE", "8760h")])).unwrap();
        assert_eq!(c.sync_deadline, MAX_DURATION);
    }
}
