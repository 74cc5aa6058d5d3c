//! The built worker binaries' and `sb-migrate`'s command line: `--help` and `--version` exit 0,
//! a bad argument or settings file 64.

use std::process::Command;

const BINARIES: &[(&str, &str)] = &[
    ("worker-auth", env!("CARGO_BIN_EXE_worker-auth")),
    ("worker-users", env!("CARGO_BIN_EXE_worker-users")),
    ("worker-invites", env!("CARGO_BIN_EXE_worker-invites")),
    ("worker-dms", env!("CARGO_BIN_EXE_worker-dms")),
    ("worker-presence", env!("CARGO_BIN_EXE_worker-presence")),
    ("sb-migrate", env!("CARGO_BIN_EXE_sb-migrate")),
];

fn run(exe: &str, args: &[&str]) -> std::process::Output {
    Command::new(exe)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn help_and_version_exit_0() {
    for (name, exe) in BINARIES {
        let help = run(exe, &["--help"]);
        assert_eq!(help.status.code(), Some(0), "{name}: {help:?}");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains(&format!("Usage: {name} [OPTIONS]")), "{text}");
        let version = run(exe, &["--version"]);
        assert_eq!(version.status.code(), Some(0), "{name}: {version:?}");
        assert_eq!(
            String::from_utf8_lossy(&version.stdout),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn bad_arguments_and_missing_settings_exit_64() {
    for (name, exe) in BINARIES {
        let unknown = run(exe, &["--nope"]);
        assert_eq!(unknown.status.code(), Some(64), "{name}: {unknown:?}");
        let missing = run(exe, &["--config", "/nonexistent/x.toml"]);
        assert_eq!(missing.status.code(), Some(64), "{name}: {missing:?}");
        assert!(String::from_utf8_lossy(&missing.stderr).starts_with("configuration error:"));
    }
}
