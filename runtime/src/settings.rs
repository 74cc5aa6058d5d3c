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
    /// How long a publish may wait before it is reported failed to the client: longer than a
    /// partition leader's move to another broker after a broker is lost (measured 3-10 s), so
    /// that such a move delays records instead of failing them (a failed request is resent by its
    /// client after the ones it sent later, and stored after them).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// How long a producer holds records to send them in one request (`linger.ms`). Unset, each
    /// kind of process uses its own default ([`crate::kafka::LINGER_MS`] for workers and the
    /// router; edges hold their requests longer, see `edge_ws::EDGE_LINGER_MS`).
    #[serde(default)]
    pub linger_ms: Option<u64>,
    /// This process' own name in its consumer group (Kafka static membership,
    /// `group.instance.id`): a process that comes back under the same name within the session
    /// timeout gets its partitions back at once, with no rebalance, where an unnamed one leaves
    /// them waiting for the timeout. It must be unique within the group and the same across
    /// restarts of one process; unset, membership is dynamic.
    #[serde(default)]
    pub group_instance_id: Option<String>,
}

fn default_partitions() -> i32 {
    6
}
fn default_message_timeout_ms() -> u64 {
    15_000
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

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, with the fields of every enclosing span (`spans`), so a line
    /// inside a request carries its `trace_id`.
    Json,
}

/// The `[log]` section every service binary reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// The `[trace]` section every service binary reads: span export over OTLP/HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP traces URL (`http://127.0.0.1:4318/v1/traces`). Unset (the
    /// default): tracing is off — no span exported, no trace header written or read.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces (requests arriving at an edge) that are recorded, 0 to 1; a hop
    /// downstream follows the decision its parent carries.
    pub sample_ratio: f64,
    /// Finished spans waiting for the exporter; beyond, new ones are dropped and counted.
    pub queue_spans: usize,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            otlp_endpoint: None,
            sample_ratio: 0.1,
            queue_spans: crate::trace::DEFAULT_QUEUE_SPANS,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:19092".into(),
            topic_prefix: "sb".into(),
            replication_factor: 1,
            partitions: default_partitions(),
            message_timeout_ms: default_message_timeout_ms(),
            linger_ms: None,
            group_instance_id: None,
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

/// The command line every Switchboard binary takes (one definition for all of them). The name
/// shown by `--help` and `--version` is the running binary's.
#[derive(Clone, Debug, PartialEq, Eq, clap::Parser)]
#[command(
    version,
    about = "A Switchboard process. Settings: built-in defaults, then the TOML file given with \
             --config, then SWITCHBOARD_<SECTION>__<KEY> environment variables.",
    after_help = "Exit codes: 0 after --help or --version; 64 for an unknown argument or a \
                  settings file or variable that does not load (before any port is bound)."
)]
pub struct Cli {
    /// TOML settings file; unknown keys are refused and a missing file is an error.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why a binary stops before it starts: `--help`/`--version` (code 0, text for stdout) or a
/// usage or settings error (code [`EXIT_CONFIG`], text for stderr).
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub text: String,
}

/// Parse a command line (the first item is the binary's path) and load the settings it names.
pub fn from_args<T, I>(args: I) -> Result<T, Exit>
where
    T: DeserializeOwned + Serialize + Default,
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "switchboard".into());
    let cli = Cli::command()
        .name(name.clone())
        .bin_name(name)
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| Exit {
            code: if e.use_stderr() { EXIT_CONFIG } else { 0 },
            text: e.render().to_string(),
        })?;
    load::<T>(cli.config.as_deref()).map_err(|e| Exit {
        code: EXIT_CONFIG,
        text: format!("configuration error: {e}\n"),
    })
}

/// Load settings for a binary from its command line; print help, version or the error and exit
/// (0 for help and version, 64 for a bad argument or bad settings).
pub fn load_or_exit<T: DeserializeOwned + Serialize + Default>() -> T {
    match from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(Exit { code: 0, text }) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(Exit { code, text }) => {
            eprint!("{text}");
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct S {
        #[serde(default)]
        log: LogSettings,
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
        assert_eq!(k.message_timeout_ms, 15_000);
        assert_eq!(k.linger_ms, None);
        assert_eq!(k.topics().deliver(), "sb.deliver.v1");
        assert_eq!(s.n, 3);
    }

    #[test]
    fn the_log_format_is_text_unless_set_to_json() {
        assert_eq!(load::<S>(None).unwrap().log.format, LogFormat::Text);
        let f = write("[log]\nformat = \"json\"\n");
        assert_eq!(load::<S>(Some(&f.0)).unwrap().log.format, LogFormat::Json);
        let f = write("[log]\nformat = \"yaml\"\n");
        assert!(load::<S>(Some(&f.0)).unwrap_err().contains("yaml"));
        let f = write("[log]\nlevel = \"debug\"\n");
        assert!(load::<S>(Some(&f.0)).unwrap_err().contains("level"));
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
        use clap::Parser;
        let a = |v: &[&str]| Cli::try_parse_from(v).map(|c| c.config);
        assert_eq!(a(&["bin"]).unwrap(), None);
        assert_eq!(
            a(&["bin", "--config", "x.toml"]).unwrap(),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(a(&["bin", "-c", "y.toml"]).unwrap(), Some("y.toml".into()));
        assert_eq!(
            a(&["bin", "--config=z.toml"]).unwrap(),
            Some("z.toml".into())
        );
        assert!(a(&["bin", "--config"]).is_err());
        assert!(a(&["bin", "--nope"]).is_err());
        assert!(a(&["bin", "extra"]).is_err());
        let kind = |v: &[&str]| Cli::try_parse_from(v).unwrap_err().kind();
        assert_eq!(
            kind(&["bin", "--help"]),
            clap::error::ErrorKind::DisplayHelp
        );
        assert_eq!(kind(&["bin", "-h"]), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(
            kind(&["bin", "--version"]),
            clap::error::ErrorKind::DisplayVersion
        );
        assert_eq!(kind(&["bin", "-V"]), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            kind(&["bin", "--nope"]),
            clap::error::ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn help_and_version_exit_0_bad_arguments_and_settings_exit_64() {
        let run = |v: &[&str]| from_args::<S, _>(v.iter().copied()).unwrap_err();
        let help = run(&["/opt/sb/edge-ws", "--help"]);
        assert_eq!(help.code, 0);
        assert!(
            help.text.contains("Usage: edge-ws [OPTIONS]"),
            "{}",
            help.text
        );
        assert!(help.text.contains("--config <FILE>"), "{}", help.text);
        assert!(help.text.contains("Exit codes"), "{}", help.text);
        let version = run(&["worker-dms", "--version"]);
        assert_eq!(
            version,
            Exit {
                code: 0,
                text: format!("worker-dms {}\n", env!("CARGO_PKG_VERSION")),
            }
        );
        let unknown = run(&["router", "--nope"]);
        assert_eq!(unknown.code, EXIT_CONFIG);
        assert!(
            unknown.text.contains("unexpected argument '--nope'"),
            "{}",
            unknown.text
        );
        assert!(unknown.text.contains("Usage: router"), "{}", unknown.text);
        assert_eq!(run(&["router", "--config"]).code, EXIT_CONFIG);
        let missing = run(&["sb-migrate", "--config", "/nonexistent/x.toml"]);
        assert_eq!(missing.code, EXIT_CONFIG);
        assert!(missing
            .text
            .starts_with("configuration error: config file /nonexistent/x.toml does not exist"));
        let f = write("bogus = 1\n");
        let bad = run(&["sb-migrate", "-c", f.0.to_str().unwrap()]);
        assert_eq!(bad.code, EXIT_CONFIG);
        assert!(bad.text.contains("bogus"), "{}", bad.text);
        let f = write("n = 7\n");
        let ok: S = from_args(["x", "--config", f.0.to_str().unwrap()]).unwrap();
        assert_eq!(ok.n, 7);
        assert_eq!(
            from_args::<S, _>(Vec::<String>::new()).unwrap(),
            S::default()
        );
    }
}
