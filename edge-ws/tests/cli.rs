//! The built `edge-ws` binary's command line: `--help` and `--version` print and exit 0; a bad
//! argument or settings file exits 64 before any port is bound.

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-ws"))
        .args(args)
        .output()
        .expect("the edge-ws binary runs")
}

#[test]
fn help_and_version_exit_0() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: edge-ws [OPTIONS]"), "{text}");
    assert!(text.contains("--config <FILE>"), "{text}");

    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("edge-ws {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_arguments_and_missing_settings_exit_64() {
    let unknown = run(&["--nope"]);
    assert_eq!(unknown.status.code(), Some(64), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unexpected argument '--nope'"));

    let missing = run(&["--config", "/nonexistent/edge.toml"]);
    assert_eq!(missing.status.code(), Some(64), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr)
        .starts_with("configuration error: config file /nonexistent/edge.toml does not exist"));
}
