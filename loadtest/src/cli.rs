//! Command line: one subcommand per scenario, the options every scenario shares, and the hidden
//! `child` subcommand a parent process runs when one process cannot hold every socket.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadtest",
    about = "Drive a running Switchboard platform (./sb up) and report connections, latency and loss",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open N authenticated WebSockets, hold them, report connect rate and edge memory.
    Connections(ConnectionsArgs),
    /// P pairs of users exchanging direct messages at a total rate R for D seconds.
    Dm(DmArgs),
    /// N connected clients; time until every one has each broadcast.
    Broadcast(BroadcastArgs),
    /// Pairs of reconnecting, resending clients exchanging DMs while platform processes are
    /// killed one after another; lost / duplicated / out of order / recovery time per fault.
    Chaos(ChaosArgs),
    /// Internal: hold a share of the sockets for a parent process (plan on stdin).
    #[command(hide = true)]
    Child,
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The platform's stack file (default: $SB_STACK_FILE, else .sb/stack.json).
    #[arg(long)]
    pub stack: Option<PathBuf>,
    /// Connect straight to the edges instead of through nginx.
    #[arg(long)]
    pub direct: bool,
    /// Spread client sockets over 127.0.0.2 ..= 127.0.0.(1+N); 0 lets the kernel choose
    /// (127.0.0.1, at most ~28k sockets per destination).
    #[arg(long, default_value_t = 49, value_parser = clap::value_parser!(u8).range(0..=250))]
    pub source_addrs: u8,
    /// Accounts are `<prefix><n>`, reused across runs (sign up, on 409 log in).
    #[arg(long, default_value = "lt_")]
    pub user_prefix: String,
    #[arg(long, default_value = "lt-pass-word-1")]
    pub password: String,
    /// Where session tokens are kept between runs (default: loadtest-sessions.json next to the
    /// stack file). Saves the Argon2 logins on every run after the first.
    #[arg(long)]
    pub session_cache: Option<PathBuf>,
    /// Log in afresh instead of reusing cached sessions.
    #[arg(long)]
    pub no_session_cache: bool,
    /// Write the result as JSON here, and as Markdown next to it (same name, `.md`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds one WebSocket handshake (TCP + HTTP upgrade + session check) may take.
    #[arg(long, default_value_t = 20)]
    pub connect_timeout: u64,
    /// No per-second progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// How the sockets of `connections` and `broadcast` are opened and spread over processes.
#[derive(Args, Debug, Clone)]
pub struct Fleet {
    /// Sockets opened per user (devices sharing one session), so that 100k sockets do not need
    /// 100k Argon2 logins.
    #[arg(long, default_value_t = 50)]
    pub per_user: usize,
    /// Handshakes in flight at once, over all processes. Each waits for the auth worker: more
    /// than it answers within the edge's 5 s request timeout end as 503s.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Cap on new connections per second over all processes (0: as fast as they go).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Processes holding sockets (default: enough for --per-process each).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Most sockets one process holds (each process may have 20,000 open files here).
    #[arg(long, default_value_t = 15_000)]
    pub per_process: usize,
    /// Binary to run as child processes (default: this one).
    #[arg(long, hide = true)]
    pub child_exe: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub fleet: Fleet,
    /// WebSockets to open and hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them once the last one is open.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pairs of users (one WebSocket each) chatting in their direct conversation.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages per second over all pairs.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds to wait after the last send for answers and deliveries.
    #[arg(long, default_value_t = 15)]
    pub drain: u64,
    /// Message text length in bytes.
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
    /// Pairs set up (connect, invite, accept, open) at once.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub fleet: Fleet,
    /// Connected clients that should receive every broadcast.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// Broadcasts to send (at most 64).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub count: u32,
    /// Milliseconds between broadcasts.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Seconds to wait after the last broadcast for every client to have it.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pairs of users (one client each) chatting in their direct conversation.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second over all clients.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// What to kill with SIGKILL, in order: edge, worker-<role>, workers (each role), router,
    /// nginx, redis-master, mariadb-primary, kafka (needs --kafka-brokers 3), a process name
    /// from state.json, or all.
    #[arg(long, default_value = "all")]
    pub kill: String,
    /// Seconds of traffic before the first kill.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Least seconds between a kill and the next one (the next waits for the killed process to
    /// run again and every client to have recovered).
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Most seconds to wait for that; the run moves on after it and reports the failure.
    #[arg(long, default_value_t = 90)]
    pub recover_within: u64,
    /// Seconds of traffic after the last kill.
    #[arg(long, default_value_t = 5)]
    pub tail: u64,
    /// Most seconds to wait, typing stopped, for every message to be acknowledged.
    #[arg(long, default_value_t = 60)]
    pub drain: u64,
    /// An edge or nginx is killed once its clients wait for this many answers (up to 5 s).
    #[arg(long, default_value_t = 2)]
    pub kill_in_flight: u64,
    /// Reconnect backoff: first ceiling and cap, ms (the web client's 500 / 15000).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 15_000)]
    pub backoff_max_ms: u64,
    /// Seconds a send may wait for its answer before it is sent again (the web client's 15).
    #[arg(long, default_value_t = 15)]
    pub answer_within: u64,
    /// Do not resend unacknowledged messages (shows what the resend saves).
    #[arg(long)]
    pub no_resend: bool,
    /// Do not catch up with dm.sync after a reconnect or a gap (shows what it saves).
    #[arg(long)]
    pub no_sync: bool,
    /// Do not reconnect a dropped socket.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Exit with status 1 unless nothing was lost, duplicated, out of order, unanswered or
    /// missed, every killed process ran again and every client recovered from every kill.
    #[arg(long)]
    pub ci: bool,
}

impl Common {
    /// The stack file: the flag, else `$SB_STACK_FILE`, else `.sb/stack.json`.
    pub fn stack_path(&self) -> PathBuf {
        self.stack
            .clone()
            .or_else(|| std::env::var_os("SB_STACK_FILE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".sb/stack.json"))
    }

    /// The session cache in use, if any.
    pub fn cache_path(&self) -> Option<PathBuf> {
        if self.no_session_cache {
            return None;
        }
        Some(self.session_cache.clone().unwrap_or_else(|| {
            let stack = self.stack_path();
            stack
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("loadtest-sessions.json")
        }))
    }
}

impl Fleet {
    /// How many processes hold `sockets`: the flag, else enough for `per_process` each.
    pub fn processes_for(&self, sockets: usize) -> usize {
        self.processes
            .unwrap_or_else(|| sockets.div_ceil(self.per_process.max(1)))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scenario() {
        let c = Cli::parse_from([
            "loadtest",
            "dm",
            "--pairs",
            "5",
            "--rate",
            "50",
            "--duration",
            "3",
        ]);
        let Scenario::Dm(d) = c.scenario else {
            panic!()
        };
        assert_eq!((d.pairs, d.rate, d.duration), (5, 50.0, 3));
        let c = Cli::parse_from(["loadtest", "connections", "-n", "100000", "--direct"]);
        let Scenario::Connections(a) = c.scenario else {
            panic!()
        };
        assert!(a.common.direct);
        assert_eq!(a.fleet.processes_for(a.connections), 7);
        let c = Cli::parse_from([
            "loadtest",
            "broadcast",
            "-n",
            "20",
            "--count",
            "2",
            "--processes",
            "2",
        ]);
        let Scenario::Broadcast(b) = c.scenario else {
            panic!()
        };
        assert_eq!((b.clients, b.count, b.fleet.processes_for(20)), (20, 2, 2));
        assert!(Cli::try_parse_from(["loadtest", "broadcast", "--count", "65"]).is_err());
        let c = Cli::parse_from([
            "loadtest",
            "chaos",
            "--kill",
            "edge,worker-dms",
            "--ci",
            "--no-resend",
        ]);
        let Scenario::Chaos(x) = c.scenario else {
            panic!()
        };
        assert_eq!(
            (x.kill.as_str(), x.ci, x.no_resend, x.no_sync),
            ("edge,worker-dms", true, true, false)
        );
        assert_eq!((x.pairs, x.backoff_base_ms, x.answer_within), (10, 500, 15));
    }

    #[test]
    fn the_session_cache_sits_next_to_the_stack_file() {
        let c = Cli::parse_from(["loadtest", "dm", "--stack", "x/y/stack.json"]);
        let Scenario::Dm(d) = c.scenario else {
            panic!()
        };
        assert_eq!(
            d.common.cache_path(),
            Some(PathBuf::from("x/y/loadtest-sessions.json"))
        );
        let c = Cli::parse_from(["loadtest", "dm", "--no-session-cache"]);
        let Scenario::Dm(d) = c.scenario else {
            panic!()
        };
        assert_eq!(d.common.cache_path(), None);
    }
}
