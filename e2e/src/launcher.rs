//! The processes `./sb up` started, as its `state.json` (beside `stack.json`) lists them: for
//! tests that kill or pause platform processes.

use serde::Deserialize;
use std::collections::HashMap;

/// One process in the launcher's `state.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Proc {
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub role: String,
    pub pid: u32,
    #[serde(default)]
    pub starttime: u64,
    pub addr: String,
    #[serde(default)]
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub restarts: u32,
}

impl Proc {
    /// Where it answers `/readyz` and `/metrics`.
    pub fn health_addr(&self) -> &str {
        self.metrics_addr.as_deref().unwrap_or(&self.addr)
    }
}

#[derive(Deserialize)]
struct StateFile {
    components: Vec<Proc>,
}

/// Every process of the platform under test, by name.
pub fn processes() -> HashMap<String, Proc> {
    let path = crate::stack_path().with_file_name("state.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no launcher state at {}: {e}", path.display()));
    let state: StateFile = serde_json::from_str(&text).expect("state.json is valid");
    state
        .components
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect()
}
