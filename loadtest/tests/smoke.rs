//! Each scenario at tiny scale against the platform `./sb test` started (`SB_STACK_FILE`, else
//! `.sb/stack.json`): function only — every socket held, nothing lost or duplicated, every
//! broadcast received — never timing. The platform keeps its default rate limits, so the run
//! stays far below them: ten accounts (`lts_0` … `lts_9`), each logged in at most once per run
//! (sessions are cached between runs), several sockets per login, one broadcast.

use clap::Parser;
use loadtest::{Cli, Scenario};
use std::path::PathBuf;

fn stack_file() -> PathBuf {
    let p = std::env::var_os("SB_STACK_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.sb/stack.json"));
    assert!(
        p.exists(),
        "no running stack at {}: start one with `./sb up` or run `./sb test`",
        p.display()
    );
    p
}

/// The scenario's arguments with the ones every smoke run shares.
fn cli(args: &[&str]) -> Scenario {
    let stack = stack_file();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("loadtest-smoke-sessions.json");
    let mut argv: Vec<String> = vec!["loadtest".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend([
        "--stack".into(),
        stack.display().to_string(),
        "--user-prefix".into(),
        "lts_".into(),
        "--session-cache".into(),
        cache.display().to_string(),
    ]);
    Cli::parse_from(argv).scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_works_at_small_scale() {
    loadtest::net::raise_nofile();

    // 20 sockets over 2 accounts, held for 2 s.
    let Scenario::Connections(a) = cli(&[
        "connections",
        "-n",
        "20",
        "--per-user",
        "10",
        "--duration",
        "2",
    ]) else {
        unreachable!()
    };
    let r = loadtest::connections::run(a)
        .await
        .expect("connections scenario runs");
    let c = &r.result;
    assert_eq!(
        (c.opened, c.failed, c.dropped, c.held_at_end),
        (20, 0, 0, 20),
        "{:?}",
        c.failures
    );
    assert_eq!(c.per_edge.values().sum::<u64>(), 20);
    assert!(r
        .markdown()
        .contains("connections held / requested | 20 / 20"));

    // 5 pairs (10 accounts) at 50 msg/s for 3 s.
    let Scenario::Dm(a) = cli(&[
        "dm",
        "--pairs",
        "5",
        "--rate",
        "50",
        "--duration",
        "3",
        "--drain",
        "20",
    ]) else {
        unreachable!()
    };
    let r = loadtest::dm::run(a).await.expect("dm scenario runs");
    let d = &r.result;
    assert_eq!(d.pairs_ready, 5, "{:?}", d.setup_failures);
    assert!(d.sent >= 100, "about 150 messages are sent: {}", d.sent);
    assert_eq!(
        d.acked, d.sent,
        "every message acknowledged: {:?}",
        d.rejected
    );
    assert_eq!(d.delivered, d.sent, "every message delivered to the peer");
    assert_eq!(
        (
            d.lost,
            d.unanswered,
            d.duplicated,
            d.duplicate_acks,
            d.out_of_order
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(
        d.echoes, d.sent,
        "each sender's own device gets its message too"
    );
    assert_eq!(d.send_to_deliver.count, d.sent);

    // One broadcast to 20 clients held by two child processes of the real binary.
    let Scenario::Broadcast(mut a) = cli(&[
        "broadcast",
        "-n",
        "20",
        "--per-user",
        "10",
        "--count",
        "1",
        "--processes",
        "2",
        "--duration",
        "20",
    ]) else {
        unreachable!()
    };
    a.fleet.child_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_loadtest")));
    let r = loadtest::broadcast::run(a)
        .await
        .expect("broadcast scenario runs");
    let b = &r.result;
    assert_eq!(b.clients_connected, 20, "{:?}", b.connect_failures);
    assert_eq!(b.broadcasts_accepted, 1, "{:?}", b.broadcasts_refused);
    assert_eq!((b.receptions, b.never_received, b.duplicates), (20, 0, 0));
    assert_eq!(b.fanout.count, 20);
}
