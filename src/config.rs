//! Configuration: the `hkp.toml` file, environment overrides, command-line overrides.
//!
//! A leaf module every layer may read. Unknown keys are rejected (serde
//! `deny_unknown_fields`), naming the key. Defaults live in the `Default` impls below and
//! nowhere else.
//!
//! Environment overrides: `KEYRAFT_<SECTION>__<FIELD>=<value>`, e.g. `KEYRAFT_HKP__LISTEN=0.0.0.0:11371`
//! or `KEYRAFT_LIMITS__THIRD_PARTY_CAP=50`. The value is read as a TOML value when it parses as
//! one (numbers, booleans, quoted strings) and as a plain string otherwise. They apply after
//! the file and before command-line flags.
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pgp::{Limits, ThirdPartyPolicy};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's identity and storage.
    pub node: NodeConfig,
    /// HKP listeners and request handling.
    pub hkp: HkpConfig,
    /// Certificate limits and the flooding defence.
    pub limits: LimitsConfig,
    /// Raft timing, snapshots and log compaction.
    pub raft: RaftConfig,
    /// Clustering: this node's name, its node-to-node listener, whom to join.
    pub cluster: ClusterConfig,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The operator's unique name for this node (empty: the host name).
    pub name: String,
    /// Node-to-node (gRPC) listener. Unset: a single-node cluster without one.
    pub raft_listen: Option<SocketAddr>,
    /// The address other nodes use to reach `raft_listen` (default: `raft_listen`).
    pub advertise: Option<String>,
    /// HTTP (HKP) addresses of existing members to join on first start. Empty: bootstrap.
    pub join: Vec<String>,
    /// File holding the cluster secret joiners must present (and this node presents).
    pub secret_file: Option<PathBuf>,
    /// Directory with `ca.pem`, `node.pem` and `node.key` (`keyraft cert`): mTLS between nodes.
    pub tls_dir: Option<PathBuf>,
    /// Node-to-node traffic without TLS: local experiments only.
    pub insecure_plaintext: bool,
    /// Local IP that outgoing node-to-node connections bind (default: chosen by the kernel).
    pub source_ip: Option<IpAddr>,
    /// File holding the bearer token for mutating `/cluster` calls (unset: the token is not
    /// accepted).
    pub admin_token_file: Option<PathBuf>,
    /// Names (DNS SANs) of hkps client certificates, issued by `hkp.tls_client_ca`, that may
    /// make mutating `/cluster` calls instead of the admin token. Needs `hkp.tls_listen` and
    /// `hkp.tls_client_ca`.
    pub admin_cert_names: Vec<String>,
    /// Most voters; further nodes stay learners and serve reads.
    pub max_voters: usize,
    /// Seconds after which the leader removes a member it has not heard from (0: never). A
    /// voter is removed only while at least three voters remain.
    pub auto_remove_after: u64,
    /// Armored (or binary) certificates of administrators whose detached signatures
    /// authorise `/pks/delete` and `/pks/replace` (unset: those calls are refused).
    pub admin_keyring: Option<PathBuf>,
    /// Most seconds between the creation time of a signed `/pks/delete` or `/pks/replace`
    /// signature and the request (either way); a used signature is refused for as long.
    pub admin_signature_window_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: String::new(),
            raft_listen: None,
            advertise: None,
            join: Vec::new(),
            secret_file: None,
            tls_dir: None,
            insecure_plaintext: false,
            source_ip: None,
            admin_token_file: None,
            admin_cert_names: Vec::new(),
            max_voters: 5,
            auto_remove_after: 0,
            admin_keyring: None,
            admin_signature_window_secs: 3600,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory for RocksDB, snapshots and the node id. Relative paths are relative to the
    /// working directory.
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax), overridden by `RUST_LOG`.
    pub log: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
        }
    }
}

/// `[hkp]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HkpConfig {
    /// Plain HKP listener.
    pub listen: SocketAddr,
    /// hkps listener (HKP over TLS); off when absent.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for hkps.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for hkps.
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) whose client certificates hkps accepts (admin certificates, see
    /// `cluster.admin_cert_names`). A client certificate is asked for but never required.
    pub tls_client_ca: Option<PathBuf>,
    /// HAProxy agent-check listener: each connection gets one line with this node's readiness
    /// and routing weight (`up ready 100%`, `drain`, `down #reason`); off when absent.
    pub agent_listen: Option<SocketAddr>,
    /// Most certificates one lookup returns.
    pub result_limit: usize,
    /// Largest accepted `/pks/add` body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Seconds a write may wait for commit and apply before it is answered 503.
    pub write_timeout_secs: u64,
    /// Seconds a client has to send its request head; also the keep-alive idle time.
    pub client_timeout_secs: u64,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// Most concurrent connections per worker.
    pub max_connections: usize,
}

impl Default for HkpConfig {
    fn default() -> Self {
        HkpConfig {
            listen: "127.0.0.1:11371".parse().expect("valid literal"),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            agent_listen: None,
            result_limit: 100,
            max_body_bytes: 8 << 20,
            write_timeout_secs: 30,
            client_timeout_secs: 10,
            workers: 0,
            max_connections: 10_000,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Third-party certifications: "keep", "drop" or "cap".
    pub third_party: String,
    /// With "cap": how many third-party certifications to keep per user id (the newest).
    pub third_party_cap: u32,
    /// Maximum certificate size in bytes (Hockeypuck's default: 1 MiB).
    pub max_cert_bytes: u32,
    /// Maximum size of one packet; larger photo ids and certifications are dropped.
    pub max_packet_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        LimitsConfig {
            third_party: "cap".into(),
            third_party_cap: 100,
            max_cert_bytes: d.max_cert_bytes,
            max_packet_bytes: d.max_packet_bytes,
        }
    }
}

impl LimitsConfig {
    /// The validated runtime form.
    pub fn to_limits(&self) -> Result<Limits, ConfigError> {
        let third_party = match self.third_party.as_str() {
            "keep" => ThirdPartyPolicy::Keep,
            "drop" => ThirdPartyPolicy::Drop,
            "cap" => ThirdPartyPolicy::Cap(self.third_party_cap),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "limits.third_party must be \"keep\", \"drop\" or \"cap\", not {other:?}"
                )))
            }
        };
        Ok(Limits {
            third_party,
            max_cert_bytes: self.max_cert_bytes,
            max_packet_bytes: self.max_packet_bytes,
        })
    }
}

/// `[raft]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound in milliseconds.
    pub election_min_ms: u64,
    /// Election timeout upper bound in milliseconds.
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so a lagging follower can catch up from the log.
    pub keep_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 10_000,
            keep_logs: 5_000,
        }
    }
}

/// Configuration errors, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file or an override is not valid (unknown key, wrong type...).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Keys whose environment value is a comma-separated list (`a:1,b:2`) unless written as a
/// TOML array.
const LIST_KEYS: &[(&str, &str)] = &[("cluster", "join"), ("cluster", "admin_cert_names")];
/// Keys whose environment value is always a string, even when it looks like a number.
const STRING_KEYS: &[(&str, &str)] = &[("cluster", "name"), ("cluster", "advertise")];

/// An environment override's value: a TOML value when it parses as one, else a string; lists
/// and names as above.
fn env_value(section: &str, field: &str, v: String) -> toml::Value {
    let key = (section, field);
    if STRING_KEYS.contains(&key) {
        return toml::Value::String(v);
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(p) if !LIST_KEYS.contains(&key) || p.is_array() => p,
        _ if LIST_KEYS.contains(&key) => toml::Value::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(v),
    }
}

impl Config {
    /// Load `path` (or the defaults when `None`) and apply `KEYRAFT_*` overrides from `env`,
    /// then [`Self::validate`] the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(path, env)?;
        config.validate()?;
        Ok(config)
    }

    /// As [`Self::load`] without the final cross-field check, for callers that apply further
    /// overrides (command-line flags) and validate the combination themselves: a join list
    /// from the environment with `--raft-listen` on the command line is a valid whole.
    pub fn load_unvalidated(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("defaults".to_string(), |p| p.display().to_string());
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: e.message().to_string() + &location(&text, e.span()),
        })?;
        let mut overridden = Vec::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("KEYRAFT_") else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
            let value = env_value(&section, &field, v);
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let toml::Value::Table(t) = entry {
                t.insert(field.clone(), value);
            }
            overridden.push(k);
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: if overridden.is_empty() {
                        origin
                    } else {
                        format!("{origin} with {}", overridden.join(", "))
                    },
                    message: e.message().to_string(),
                })?;
        Ok(config)
    }

    /// Check cross-field rules (also after command-line overrides).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.to_limits()?;
        if self.hkp.tls_listen.is_some()
            && (self.hkp.tls_cert.is_none() || self.hkp.tls_key.is_none())
        {
            return Err(ConfigError::Invalid(
                "hkp.tls_listen needs hkp.tls_cert and hkp.tls_key".into(),
            ));
        }
        if self.hkp.tls_client_ca.is_some() && self.hkp.tls_listen.is_none() {
            return Err(ConfigError::Invalid(
                "hkp.tls_client_ca needs hkp.tls_listen (client certificates come over hkps)"
                    .into(),
            ));
        }
        if !self.cluster.admin_cert_names.is_empty()
            && (self.hkp.tls_client_ca.is_none() || self.hkp.tls_listen.is_none())
        {
            return Err(ConfigError::Invalid(
                "cluster.admin_cert_names needs hkp.tls_listen and hkp.tls_client_ca (the CA that issues admin client certificates)".into(),
            ));
        }
        if let Some(n) = self
            .cluster
            .admin_cert_names
            .iter()
            .find(|n| n.trim().is_empty())
        {
            return Err(ConfigError::Invalid(format!(
                "cluster.admin_cert_names holds an empty name ({n:?})"
            )));
        }
        if self.raft.election_min_ms >= self.raft.election_max_ms
            || self.raft.heartbeat_ms >= self.raft.election_min_ms
        {
            return Err(ConfigError::Invalid(
                "raft timing must satisfy heartbeat_ms < election_min_ms < election_max_ms".into(),
            ));
        }
        let c = &self.cluster;
        if c.raft_listen.is_some() && c.tls_dir.is_none() && !c.insecure_plaintext {
            return Err(ConfigError::Invalid(
                "cluster.raft_listen needs cluster.tls_dir (--cluster-tls-dir, made with `keyraft cert`) or, for local experiments only, cluster.insecure_plaintext = true (--insecure-plaintext)".into(),
            ));
        }
        if c.tls_dir.is_some() && c.insecure_plaintext {
            return Err(ConfigError::Invalid(
                "cluster.tls_dir and cluster.insecure_plaintext exclude each other".into(),
            ));
        }
        if c.admin_signature_window_secs == 0 {
            return Err(ConfigError::Invalid(
                "cluster.admin_signature_window_secs must be positive".into(),
            ));
        }
        if c.max_voters == 0 {
            return Err(ConfigError::Invalid(
                "cluster.max_voters must be positive".into(),
            ));
        }
        if !self.cluster.join.is_empty() && self.cluster.raft_listen.is_none() {
            return Err(ConfigError::Invalid(
                "cluster.join needs cluster.raft_listen".into(),
            ));
        }
        if self.hkp.result_limit == 0 || self.hkp.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "hkp.result_limit and hkp.max_body_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        )
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: Vec<(&str, &str)>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hkp.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(
            Some(&p),
            env.into_iter().map(|(a, b)| (a.to_string(), b.to_string())),
        )
    }

    #[test]
    fn shipped_file_parses_and_matches_the_documented_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hkp.toml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.hkp.listen, "127.0.0.1:11371".parse().unwrap());
        assert_eq!(c.node.data_dir, PathBuf::from("./data"));
        assert_eq!(c, Config::default(), "hkp.toml documents the defaults");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_str("[hkp]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", vec![]).unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
        let e = load_str("[nope]\n", vec![]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn environment_overrides_apply_and_are_checked() {
        let c = load_str(
            "",
            vec![
                ("KEYRAFT_HKP__LISTEN", "0.0.0.0:1"),
                ("KEYRAFT_LIMITS__THIRD_PARTY_CAP", "7"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.hkp.listen, "0.0.0.0:1".parse().unwrap());
        assert_eq!(
            c.limits.to_limits().unwrap().third_party,
            ThirdPartyPolicy::Cap(7)
        );
        let e = load_str("", vec![("KEYRAFT_HKP__BOGUS", "1")]).unwrap_err();
        assert!(
            e.to_string().contains("bogus") && e.to_string().contains("KEYRAFT_HKP__BOGUS"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(load_str("[limits]\nthird_party = \"some\"\n", vec![]).is_err());
        assert!(load_str("[hkp]\ntls_listen = \"127.0.0.1:1\"\n", vec![]).is_err());
        assert!(load_str("[hkp]\nlisten = \"not an address\"\n", vec![]).is_err());
    }

    #[test]
    fn admin_cert_names_need_hkps_with_a_client_ca() {
        let hkps =
            "[hkp]\ntls_listen = \"127.0.0.1:1\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let names = "[cluster]\nadmin_cert_names = [\"ops-alice\"]\n";
        let e = load_str(names, vec![]).unwrap_err();
        assert!(
            e.to_string().contains("admin_cert_names needs")
                && e.to_string().contains("hkp.tls_client_ca")
                && !e.to_string().contains('\n'),
            "{e}"
        );
        let e = load_str(&format!("{hkps}{names}"), vec![]).unwrap_err();
        assert!(e.to_string().contains("admin_cert_names needs"), "{e}");
        let e = load_str("[hkp]\ntls_client_ca = \"ca.pem\"\n", vec![]).unwrap_err();
        assert!(e.to_string().contains("tls_client_ca needs"), "{e}");
        let ok = format!("{hkps}tls_client_ca = \"ca.pem\"\n{names}");
        let c = load_str(&ok, vec![]).unwrap();
        assert_eq!(c.cluster.admin_cert_names, vec!["ops-alice"]);
        assert_eq!(c.hkp.tls_client_ca, Some(PathBuf::from("ca.pem")));
        let c = load_str(
            &format!("{hkps}tls_client_ca = \"ca.pem\"\n"),
            vec![("KEYRAFT_CLUSTER__ADMIN_CERT_NAMES", "ops-alice, ops-bob")],
        )
        .unwrap();
        assert_eq!(c.cluster.admin_cert_names, vec!["ops-alice", "ops-bob"]);
        let e = load_str(
            &format!("{hkps}tls_client_ca = \"ca.pem\"\n[cluster]\nadmin_cert_names = [\"\"]\n"),
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("empty name"), "{e}");
    }

    #[test]
    fn env_lists_split_on_commas_and_names_stay_strings() {
        let c = load_str(
            "",
            vec![
                ("KEYRAFT_CLUSTER__JOIN", "10.0.0.1:11371, 10.0.0.2:11371"),
                ("KEYRAFT_CLUSTER__NAME", "1"),
                ("KEYRAFT_CLUSTER__RAFT_LISTEN", "127.0.0.1:11380"),
                ("KEYRAFT_CLUSTER__INSECURE_PLAINTEXT", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.cluster.join, vec!["10.0.0.1:11371", "10.0.0.2:11371"]);
        assert_eq!(c.cluster.name, "1");
        let c = load_str(
            "[cluster]\nraft_listen = \"127.0.0.1:11380\"\ninsecure_plaintext = true\n",
            vec![("KEYRAFT_CLUSTER__JOIN", "[\"a:1\"]")],
        )
        .unwrap();
        assert_eq!(c.cluster.join, vec!["a:1"]);
    }

    #[test]
    fn a_join_list_from_the_environment_combines_with_a_raft_listen_flag() {
        let env = || {
            vec![(
                "KEYRAFT_CLUSTER__JOIN".to_string(),
                "seed:11371".to_string(),
            )]
        };
        assert!(
            Config::load(None, env()).is_err(),
            "join without raft_listen"
        );
        let mut c = Config::load_unvalidated(None, env()).unwrap();
        c.cluster.raft_listen = Some("127.0.0.1:11380".parse().unwrap());
        c.cluster.insecure_plaintext = true;
        c.validate().unwrap();
        assert_eq!(c.cluster.join, vec!["seed:11371"]);
    }
}
