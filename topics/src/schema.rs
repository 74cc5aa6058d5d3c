//! The wire types described for other languages, generated from the types themselves so that the
//! descriptions cannot drift: a JSON Schema of every frame (`docs/schema/frames.schema.json`) and
//! the web client's TypeScript declarations (`web/src/generated/frames.ts`). Both files are
//! checked in; a test below fails when they differ from what the types generate, and
//! `UPDATE_GENERATED=1 cargo test -p topics generated` rewrites them.
//!
//! Two derives, each the best at its output: `schemars` writes the JSON Schema, with the
//! direction's serde contract (what a server accepts for client frames, what it writes for server
//! frames); `ts-rs` writes TypeScript that reads like hand-written declarations (named types,
//! unions by tag, doc comments kept). Both read serde's own attributes (`tag`, `flatten`,
//! `rename`, `rename_all`, `default`, `skip_serializing_if`), so a wire type carries one attribute
//! line, `#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]`; a type a
//! frame uses without it fails to build with the feature on, and once it has it both outputs
//! pick it up. (`Id`, serialised by hand as a decimal string, says so by hand in `id.rs`.) One
//! derive alone would need a second tool: TypeScript made from the JSON Schema by an npm
//! converter would take that half of the check out of `cargo test`. The derives sit behind the
//! `schema` feature, which only this crate's tests turn on: the services never call them.

use crate::error::ErrorBody;
use crate::frames::{ClientFrame, Request, Response, ServerFrame};
use schemars::generate::SchemaSettings;
use serde_json::{json, Value};
use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use ts_rs::{Config, TypeVisitor, TS};

/// Where the generated files live, relative to the workspace root.
pub const SCHEMA_PATH: &str = "docs/schema/frames.schema.json";
pub const TYPESCRIPT_PATH: &str = "web/src/generated/frames.ts";
/// The command that rewrites both files.
pub const REGENERATE: &str = "UPDATE_GENERATED=1 cargo test -p topics generated";

/// The JSON Schema (draft 2020-12) of every frame. `ClientFrame` is what a server accepts (fields
/// with a default may be left out), `ServerFrame` what a server writes to a WebSocket, and
/// `Response` / `ErrorBody` the bodies of HTTP replies; every named type is in `$defs`.
pub fn json_schema() -> Value {
    let mut incoming = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let client = incoming.subschema_for::<ClientFrame>();
    let mut outgoing = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let server = outgoing.subschema_for::<ServerFrame>();
    outgoing.subschema_for::<Response>();
    outgoing.subschema_for::<ErrorBody>();

    let mut defs = incoming.take_definitions(true);
    for (name, schema) in outgoing.take_definitions(true) {
        if let Some(seen) = defs.get(&name) {
            // a type both directions use (`Id`) must read the same in both
            assert_eq!(seen, &schema, "{name} differs between the two directions");
        }
        defs.insert(name, schema);
    }
    sorted(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Switchboard frames",
        "description": "One WebSocket text frame: a ClientFrame (client to server) or a \
            ServerFrame (server to client). HTTP request bodies carry a request's fields, HTTP \
            replies are a Response or an ErrorBody. Generated from topics/src by \
            topics/src/schema.rs; see docs/protocol.md.",
        "oneOf": [client, server],
        "$defs": defs,
    }))
}

/// Object keys in order at every level, also when a dependency turns on serde_json's
/// `preserve_order` (which would keep schemars' own order), so the file reads the same either way.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The TypeScript declarations of every wire type, one module: the roots, then every named type
/// they use, sorted by name (ts-rs visits dependencies in no fixed order). Large integers (sequence
/// numbers, timestamps) are `number`: serde_json writes them as JSON numbers and none reaches
/// 2^53; ids, which can, are strings.
pub fn typescript() -> String {
    let mut out = Declarations {
        cfg: Config::new().with_large_int("number"),
        seen: HashSet::new(),
        decls: BTreeMap::new(),
    };
    let roots = [
        out.declare::<ClientFrame>(),
        // `ClientFrame` inlines it (serde's `flatten`); the page names it itself
        out.declare::<Request>(),
        out.declare::<ServerFrame>(),
        out.declare::<ErrorBody>(),
    ];
    let decls: Vec<String> = roots.into_iter().chain(out.decls.into_values()).collect();
    format!(
        "// Generated from the Rust types in topics/src by topics/src/schema.rs: do not edit.\n\
         // Regenerate with `{REGENERATE}`.\n\n{}",
        decls.join("\n")
    )
}

/// Collects the declarations of the named types a type uses.
struct Declarations {
    cfg: Config,
    seen: HashSet<TypeId>,
    decls: BTreeMap<String, String>,
}

impl Declarations {
    /// The declaration of `T`; those of the types it uses go to `decls`.
    fn declare<T: TS + 'static>(&mut self) -> String {
        self.seen.insert(TypeId::of::<T>());
        self.decls.remove(&T::ident(&self.cfg));
        T::visit_dependencies(self);
        render::<T>(&self.cfg)
    }
}

impl TypeVisitor for Declarations {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        // a type without an output path has no declaration of its own (`String`, `Vec<T>`, …)
        if T::output_path().is_none() || !self.seen.insert(TypeId::of::<T>()) {
            return;
        }
        self.decls
            .insert(T::ident(&self.cfg), render::<T>(&self.cfg));
        T::visit_dependencies(self);
    }
}

fn render<T: TS + ?Sized>(cfg: &Config) -> String {
    let docs = T::docs().unwrap_or_default();
    format!("{docs}export {}\n", layout(&T::decl(cfg)))
}

/// ts-rs writes a declaration on one line (broken only by field comments): put each member of a
/// union on a line of its own and indent the rest of a declaration under its first line.
fn layout(decl: &str) -> String {
    let mut out = String::with_capacity(decl.len() + 64);
    let (mut braces, mut parens) = (0usize, 0usize);
    let (mut in_str, mut in_comment, mut union) = (false, false, false);
    let mut chars = decl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if in_comment => in_comment = !(c == '*' && chars.peek() == Some(&'/')),
            _ if in_str => in_str = c != '"',
            '"' => in_str = true,
            '/' if chars.peek() == Some(&'*') => in_comment = true,
            '{' => braces += 1,
            '}' => braces -= 1,
            '(' => parens += 1,
            ')' => parens -= 1,
            '|' if braces == 0 => {
                if !union && parens == 0 {
                    // the whole right-hand side is the union: its first member gets a line too
                    out = out.replacen(" = ", " =\n| ", 1);
                }
                union = true;
                out.truncate(out.trim_end().len());
                out.push_str("\n|");
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    let mut lines = out.lines().map(str::trim_end);
    let first = lines.next().unwrap_or_default().to_string();
    lines.fold(first, |mut acc, line| {
        acc.push_str(if line.starts_with('|') {
            "\n  "
        } else {
            "\n    "
        });
        acc.push_str(line);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// Compares (or with `UPDATE_GENERATED=1` rewrites) one generated file.
    fn check(path: &str, generated: &str) -> Option<String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let update = std::env::var_os("UPDATE_GENERATED").is_some();
        check_in(&root, path, generated, update)
    }

    /// [`check`] of `path` under `root`: `update` rewrites the file (and its folder) and reports
    /// nothing; otherwise a file missing or not `generated` is reported, with how to regenerate.
    fn check_in(root: &Path, path: &str, generated: &str, update: bool) -> Option<String> {
        let file = root.join(path);
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, generated).unwrap();
            return None;
        }
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        (current != generated).then(|| {
            format!(
                "{path} is not what the Rust types generate; \
                 regenerate with `{REGENERATE}` and commit the result"
            )
        })
    }

    /// The regeneration mode writes what the check then finds current; a file missing or
    /// different is reported with the command that regenerates it.
    #[test]
    fn a_stale_generated_file_is_reported_until_regenerated() {
        let root = std::env::temp_dir().join(format!("sb-generated-{}", std::process::id()));
        let path = "docs/schema/x.json";
        let missing = check_in(&root, path, "new", false).expect("a missing file is stale");
        assert!(
            missing.starts_with("docs/schema/x.json is not what"),
            "{missing}"
        );
        assert!(missing.contains(REGENERATE), "{missing}");
        assert_eq!(check_in(&root, path, "new", true), None);
        assert_eq!(std::fs::read_to_string(root.join(path)).unwrap(), "new");
        assert_eq!(check_in(&root, path, "new", false), None, "current now");
        assert!(
            check_in(&root, path, "newer", false).is_some(),
            "stale again"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn layout_breaks_only_top_level_unions() {
        assert_eq!(
            layout(r#"type A = { "k": "a|b", x: string | null, } | { /** c | d */ y: number, };"#),
            "type A =\n  | { \"k\": \"a|b\", x: string | null, }\n  | { /** c | d */ y: number, };"
        );
        assert_eq!(
            layout("type F = { rid?: string | null, } & ({ a: 1 } | { b: 2,\n/** doc */\nc: 3, });"),
            "type F = { rid?: string | null, } & ({ a: 1 }\n  | { b: 2,\n    /** doc */\n    c: 3, });"
        );
        assert_eq!(layout("type I = string;"), "type I = string;");
    }

    #[test]
    fn generated_files_are_current() {
        let mut schema = serde_json::to_string_pretty(&json_schema()).unwrap();
        schema.push('\n');
        let stale: Vec<String> = [
            check(SCHEMA_PATH, &schema),
            check(TYPESCRIPT_PATH, &typescript()),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(stale, Vec::<String>::new());
    }
}
