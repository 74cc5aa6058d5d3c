//! `loadtest connections | dm | broadcast | chaos` — see `docs/benchmarks.md`.

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
            Scenario::Chaos(a) => {
                let out = a.common.out.clone();
                let ci = a.ci;
                let r = loadtest::chaos::run(a).await?;
                r.emit(out.as_deref())?;
                let table = r.result.table();
                println!("{table}");
                if let Some(p) = out.as_deref().map(|p| p.with_extension("md")) {
                    let md = r.markdown() + "\n" + &table;
                    std::fs::write(&p, md).map_err(|e| {
                        loadtest::Error::Setup(format!("writing {}: {e}", p.display()))
                    })?;
                }
                if ci && !r.result.failures.is_empty() {
                    return Err(loadtest::Error::Setup(format!(
                        "the fault run failed: {}",
                        r.result.failures.join("; ")
                    )));
                }
                Ok(())
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
