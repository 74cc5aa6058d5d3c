//! `loadtest connections | dm | broadcast | chaos` — see `docs/benchmarks.md`.

fn main() -> std::process::ExitCode {
    loadtest::run_cli()
}
