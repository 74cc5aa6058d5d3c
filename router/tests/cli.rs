//! The built `router` binary's command line: `--help` and `--version` exit 0, a bad argument 64.

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_router"))
        .args(args)
        .output()
        .expect("the router binary runs")
}

#[test]
fn help_and_version_exit_0_bad_arguments_64() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: router [OPTIONS]"));
    let version = run(&["-V"]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("router {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(run(&["--nope"]).status.code(), Some(64));
}
