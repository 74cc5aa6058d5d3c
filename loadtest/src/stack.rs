//! The platform under test: `stack.json` (written by `./sb up`) names the nginx and edge
//! addresses; `state.json` next to it holds every process' PID, for CPU and memory readings.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
struct StackFile {
    nginx: Vec<String>,
    #[serde(default)]
    edges: Vec<EdgeEntry>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EdgeEntry {
    pub id: String,
    pub addr: String,
}

#[derive(Debug, Deserialize)]
struct StateFile {
    #[serde(default)]
    components: Vec<Component>,
}

/// One process `./sb` started.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub kind: String,
    pub pid: u32,
    /// Where it listens (`/healthz`, and `/metrics` for workers and the router).
    #[serde(default)]
    pub addr: Option<String>,
    /// Where it serves `/metrics` when that is elsewhere: an edge's internal listener.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

impl Component {
    /// Where to scrape `/metrics`.
    pub fn metrics(&self) -> Option<String> {
        self.metrics_addr.clone().or_else(|| self.addr.clone())
    }
}

#[derive(Clone, Debug)]
pub struct Stack {
    pub path: PathBuf,
    pub nginx: Vec<String>,
    pub edges: Vec<EdgeEntry>,
}

impl Stack {
    pub fn load(path: &Path) -> Result<Stack> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Setup(format!(
                "no stack file at {} ({e}): start the platform with `./sb up` or pass --stack",
                path.display()
            ))
        })?;
        let f: StackFile = serde_json::from_str(&text)
            .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
        Ok(Stack {
            path: path.to_path_buf(),
            nginx: f.nginx,
            edges: f.edges,
        })
    }

    /// Where clients connect: the nginx instances, or with `direct` every edge.
    pub fn targets(&self, direct: bool) -> Result<Vec<String>> {
        let t: Vec<String> = if direct {
            self.edges.iter().map(|e| e.addr.clone()).collect()
        } else {
            self.nginx.clone()
        };
        if t.is_empty() {
            return Err(Error::Setup(format!(
                "{} lists no {}",
                self.path.display(),
                if direct { "edges" } else { "nginx" }
            )));
        }
        Ok(t)
    }

    /// Every process of the platform (empty when `state.json` is not beside the stack file).
    pub fn components(&self) -> Vec<Component> {
        let state = self.path.with_file_name("state.json");
        std::fs::read_to_string(state)
            .ok()
            .and_then(|t| serde_json::from_str::<StateFile>(&t).ok())
            .map(|s| s.components)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stack_and_state_files() {
        let dir = std::env::temp_dir().join(format!("lt-stack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stack = dir.join("stack.json");
        std::fs::write(
            &stack,
            r#"{"nginx":["127.0.0.1:1"],"edges":[{"id":"edge-0","addr":"127.0.0.1:2"}],"kafka":{}}"#,
        )
        .unwrap();
        let s = Stack::load(&stack).unwrap();
        assert_eq!(s.targets(false).unwrap(), vec!["127.0.0.1:1"]);
        assert_eq!(s.targets(true).unwrap(), vec!["127.0.0.1:2"]);
        assert!(s.components().is_empty());
        std::fs::write(
            dir.join("state.json"),
            r#"{"components":[{"name":"edge-0","kind":"edge","pid":7,"addr":"x","metrics_addr":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.components(),
            vec![Component {
                name: "edge-0".into(),
                kind: "edge".into(),
                pid: 7,
                addr: Some("x".into()),
                metrics_addr: Some("y".into()),
            }]
        );
        assert_eq!(s.components()[0].metrics().as_deref(), Some("y"));
        std::fs::write(&stack, r#"{"nginx":[]}"#).unwrap();
        assert!(Stack::load(&stack).unwrap().targets(true).is_err());
        assert!(Stack::load(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
