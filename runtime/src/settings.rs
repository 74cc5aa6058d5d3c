//! Settings: one figment chain — defaults, then the TOML file given with `--config`, then
//! `SWITCHBOARD_<SECTION>__<KEY>` environment variables. Unknown keys are errors. A binary that
//! cannot load its settings exits with code 64 before binding any port.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Every topic and consumer group name starts with this.
    pub topic_prefix: String,
    pub replication_factor: i32,
    /// Partitions of the shared request topics when this process creates them.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// How long a publish may wait before it is reported failed to the client.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// How long a producer holds records to send them in one request (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

fn default_linger_ms() -> u64 {
    1
}

fn default_partitions() -> i32 {
    6
}
fn default_message_timeout_ms() -> u64 {
    5_000
}

impl KafkaSettings {
    pub fn topics(&self) -> topics::Topics {
        topics::Topics::new(self.topic_prefix.clone())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Seed nodes of the cluster, `redis://host:port`.
    pub nodes: Vec<String>,
    /// Every key starts with this (tests use a unique one).
    pub key_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Process name, for logs (`worker-dms`); consumer groups are named by role.
    pub name: String,
    /// Where `/healthz` and `/metrics` are served.
    pub health_listen: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:19092".into(),
            topic_prefix: "sb".into(),
            replication_factor: 1,
            partitions: default_partitions(),
            message_timeout_ms: default_message_timeout_ms(),
            linger_ms: default_linger_ms(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            nodes: (17000..17006)
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            key_prefix: "sb".into(),
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            name: "switchboard".into(),
            health_listen: "127.0.0.1:0".into(),
        }
    }
}

/// Read settings from defaults, an optional TOML file, then the environment.
pub fn load<T: DeserializeOwned + Serialize + Default>(file: Option<&Path>) -> Result<T, String> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig.merge(Env::prefixed("SWITCHBOARD_").split("__"))
        .extract()
        .map_err(|e| e.to_string())
}

/// The `--config PATH` argument of a binary's command line, if any.
pub fn config_arg(args: impl IntoIterator<Item = String>) -> Result<Option<PathBuf>, String> {
    let mut args = args.into_iter().skip(1);
    let mut path = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => {
                path = Some(PathBuf::from(
                    args.next().ok_or("--config needs a file path")?,
                ))
            }
            other => return Err(format!("unknown argument {other:?} (usage: --config FILE)")),
        }
    }
    Ok(path)
}

/// Load settings for a binary, or print the error and exit 64.
pub fn load_or_exit<T: DeserializeOwned + Serialize + Default>() -> T {
    match config_arg(std::env::args()).and_then(|p| load::<T>(p.as_deref())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct S {
        kafka: Option<KafkaSettings>,
        #[serde(default)]
        n: u32,
    }

    fn write(content: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(content)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(content: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "sb-settings-{}-{}.toml",
                    std::process::id(),
                    rand_suffix()
                ));
                std::fs::write(&p, content).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        fn rand_suffix() -> u64 {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            N.fetch_add(1, Ordering::Relaxed)
        }
    }

    #[test]
    fn loads_a_file_with_defaults() {
        let f = write(
            "n = 3\n[kafka]\nbrokers = \"b:1\"\ntopic_prefix = \"sb\"\nreplication_factor = 1\n",
        );
        let s: S = load(Some(&f.0)).unwrap();
        let k = s.kafka.unwrap();
        assert_eq!(k.partitions, 6);
        assert_eq!(k.message_timeout_ms, 5_000);
        assert_eq!(k.linger_ms, 1);
        assert_eq!(k.topics().deliver(), "sb.deliver.v1");
        assert_eq!(s.n, 3);
    }

    #[test]
    fn refuses_unknown_keys_and_missing_files() {
        let f = write("bogus = 1\n");
        assert!(load::<S>(Some(&f.0)).unwrap_err().contains("bogus"));
        assert!(load::<S>(Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .contains("does not exist"));
        assert_eq!(load::<S>(None).unwrap(), S::default());
    }

    #[test]
    fn parses_the_config_argument() {
        let a = |v: &[&str]| config_arg(v.iter().map(|s| s.to_string()));
        assert_eq!(a(&["bin"]).unwrap(), None);
        assert_eq!(
            a(&["bin", "--config", "x.toml"]).unwrap(),
            Some(PathBuf::from("x.toml"))
        );
        assert!(a(&["bin", "--config"]).is_err());
        assert!(a(&["bin", "--nope"]).is_err());
    }
}
