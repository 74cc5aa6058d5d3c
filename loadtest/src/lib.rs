//! Switchboard's load generator. It speaks the real protocol — HTTP sign-up and login, the
//! authenticated WebSocket handshake, JSON frames — through nginx or straight to the edges of a
//! platform started by `./sb up`, and reports the figures of `docs/benchmarks.md`:
//!
//! - [`connections`]: N sockets opened and held; connect+auth rate, failures by reason, edge
//!   memory per socket;
//! - [`dm`]: P pairs exchanging direct messages at R msg/s; sent / acknowledged / delivered /
//!   lost / duplicated / out of order, send→ack and send→deliver latency;
//! - [`broadcast`]: N clients, one broadcast at a time; fan-out time and never-received count;
//! - [`chaos`]: pairs of clients that reconnect, catch up and resend like the web client while
//!   platform processes are killed one after another; what each kill lost, duplicated or
//!   delayed ([`resilient`] holds the bookkeeping).
//!
//! Every scenario is bounded in count and time and stops by itself.

pub mod accounts;
pub mod backlog;
pub mod broadcast;
pub mod chaos;
pub mod cli;
pub mod connections;
pub mod conns;
pub mod dm;
pub mod fleet;
pub mod hist;
pub mod net;
pub mod procs;
pub mod report;
pub mod resilient;
pub mod stack;

use clap::Parser;
pub use cli::{Cli, Scenario};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run could not start or finish (no platform, bad arguments, accounts refused, …).
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every scenario prepares: the platform, where to connect, accounts.
pub(crate) struct Setup {
    pub targets: Vec<String>,
    pub components: Vec<stack::Component>,
    pub accounts: accounts::Accounts,
    /// `/proc/loadavg` when the run started (other tenants of the machine show here).
    pub loadavg_start: String,
}

impl Setup {
    pub fn new(c: &cli::Common) -> Result<Setup> {
        let stack = stack::Stack::load(&c.stack_path())?;
        let targets = stack.targets(c.direct)?;
        let components = stack.components();
        let accounts = accounts::Accounts::new(
            targets.clone(),
            c.source_addrs,
            &c.user_prefix,
            &c.password,
            c.cache_path(),
            c.quiet,
        )?;
        Ok(Setup {
            targets,
            components,
            accounts,
            loadavg_start: loadavg(),
        })
    }
}

/// The command line as typed, with the program name shortened.
pub(crate) fn command_line() -> String {
    let mut args = std::env::args();
    let _ = args.next();
    std::iter::once("loadtest".to_string())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn now_unix_s() -> u64 {
    conns::unix_us() / 1_000_000
}

pub(crate) fn via(direct: bool) -> String {
    if direct { "direct" } else { "nginx" }.to_string()
}

/// Print a progress line unless quiet.
pub(crate) fn say(quiet: bool, line: impl std::fmt::Display) {
    if !quiet {
        println!("{line}");
    }
}

/// The `loadtest` binary: parse the command line, run the scenario, report. A plain function the
/// binary calls, so the scenarios are compiled once, in this library.
pub fn run_cli() -> std::process::ExitCode {
    let cli = Cli::parse();
    crate::net::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.scenario {
            Scenario::Connections(a) => {
                let out = a.common.out.clone();
                crate::connections::run(a).await?.emit(out.as_deref())
            }
            Scenario::Dm(a) => {
                let out = a.common.out.clone();
                crate::dm::run(a).await?.emit(out.as_deref())
            }
            Scenario::Broadcast(a) => {
                let out = a.common.out.clone();
                crate::broadcast::run(a).await?.emit(out.as_deref())
            }
            Scenario::Chaos(a) => {
                let out = a.common.out.clone();
                let ci = a.ci;
                let r = crate::chaos::run(a).await?;
                r.emit(out.as_deref())?;
                let table = r.result.table();
                println!("{table}");
                if let Some(p) = out.as_deref().map(|p| p.with_extension("md")) {
                    let md = r.markdown() + "\n" + &table;
                    std::fs::write(&p, md).map_err(|e| {
                        crate::Error::Setup(format!("writing {}: {e}", p.display()))
                    })?;
                }
                if ci && !r.result.failures.is_empty() {
                    return Err(crate::Error::Setup(format!(
                        "the fault run failed: {}",
                        r.result.failures.join("; ")
                    )));
                }
                Ok(())
            }
            Scenario::Child => crate::fleet::run_child().await,
        }
    });
    // Sockets still open in detached tasks must not delay the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
