//! `SB_BUILD_COMMIT` for `switchboard_build_info`: the commit of the checkout being built (from
//! `git`, no network), or the value of the same variable in the build's environment, or
//! `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Rebuild when this file changes (only if it exists: a missing one would rerun every build).
fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=SB_BUILD_COMMIT");
    let commit = std::env::var("SB_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // rebuild when HEAD moves: the HEAD file and the branch it names
            for p in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", p]));
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &r]));
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SB_BUILD_COMMIT={commit}");
}
