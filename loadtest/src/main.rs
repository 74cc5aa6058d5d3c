//! `loadtest connections | dm | broadcast` — see `docs/benchmarks.md`.

use clap::Parser;
use loadtest::{Cli, Scenario};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    loadtest::net::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.scenario {
            Scenario::Connections(a) => {
                let out = a.common.out.clone();
                loadtest::connections::run(a).await?.emit(out.as_deref())
            }
            Scenario::Dm(a) => {
                let out = a.common.out.clone();
                loadtest::dm::run(a).await?.emit(out.as_deref())
            }
            Scenario::Broadcast(a) => {
                let out = a.common.out.clone();
                loadtest::broadcast::run(a).await?.emit(out.as_deref())
            }
            Scenario::Child => loadtest::fleet::run_child().await,
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
