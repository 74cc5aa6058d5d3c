//! The migration runner against the real MariaDB shards of the shared stack (`SB_STACK_FILE`,
//! default `.sb/stack.json`), each test in a database of its own: applying twice applies nothing,
//! a changed applied migration is refused, two runners at once apply each migration once, and a
//! database migrated by the runner before refinery is adopted without applying anything again.

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use std::path::PathBuf;
use std::time::Duration;
use workers::migrations::{self, MIGRATIONS};
use workers::settings::{DatabaseSettings, ShardSettings};

/// A database of the shared stack's shards, dropped at the end of the test.
struct TestDb {
    settings: DatabaseSettings,
}

impl TestDb {
    fn new(tag: &str) -> Self {
        let path = std::env::var("SB_STACK_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.sb/stack.json")
            });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no running stack at {} ({e}): start one with `./sb up` or run `./sb test`",
                path.display()
            )
        });
        let stack: serde_json::Value = serde_json::from_str(&text).expect("stack.json is valid");
        let m = &stack["mariadb"];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TestDb {
            settings: DatabaseSettings {
                user: m["user"].as_str().unwrap().into(),
                password: m["password"].as_str().unwrap().to_string().into(),
                name: format!("mig_{tag}_{}_{nanos:08x}", std::process::id()),
                shards: serde_json::from_value::<Vec<ShardSettings>>(m["shards"].clone()).unwrap(),
                logical_shards: 16,
                logical_map: None,
                pool_max: 4,
                ..Default::default()
            },
        }
    }

    fn shards(&self) -> usize {
        self.settings.shards.len()
    }

    /// A connection to shard `i`'s primary, without a default database.
    async fn conn(&self, i: usize) -> Conn {
        let (host, port) = self.settings.shards[i].primary.rsplit_once(':').unwrap();
        let opts = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port.parse().unwrap())
            .user(Some(self.settings.user.clone()))
            .pass(Some({
                use secrecy::ExposeSecret;
                self.settings.password.expose_secret().to_string()
            }))
            .prefer_socket(false);
        Conn::new(opts).await.unwrap()
    }

    /// `versions` repeated once per shard, as `migrate` reports them.
    fn every_shard(&self, versions: &[u32]) -> Vec<u32> {
        (0..self.shards()).flat_map(|_| versions.to_vec()).collect()
    }

    /// The versions in refinery's history on shard `i`, with their checksums.
    async fn history(&self, i: usize) -> Vec<(u32, String, String)> {
        let mut c = self.conn(i).await;
        c.query(format!(
            "SELECT version, name, checksum FROM `{}`.{} ORDER BY version",
            self.settings.name,
            migrations::HISTORY_TABLE
        ))
        .await
        .unwrap()
    }

    async fn has_table(&self, i: usize, table: &str) -> bool {
        let mut c = self.conn(i).await;
        let n: Option<u64> = c
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (&self.settings.name, table),
            )
            .await
            .unwrap();
        n == Some(1)
    }

    async fn drop(self) {
        for i in 0..self.shards() {
            let mut c = self.conn(i).await;
            c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.settings.name))
                .await
                .unwrap();
        }
    }

    /// What the runner before refinery did (its code as it was, `;`-splitter included), for the
    /// migrations up to `upto`: the kind of database that has to be adopted.
    async fn legacy_migrate(&self, upto: u32) {
        for i in 0..self.shards() {
            let mut c = self.conn(i).await;
            c.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                self.settings.name
            ))
            .await
            .unwrap();
            c.query_drop(format!("USE `{}`", self.settings.name))
                .await
                .unwrap();
            c.query_drop(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INT UNSIGNED NOT NULL PRIMARY KEY, applied_at_ms BIGINT UNSIGNED NOT NULL)",
            )
            .await
            .unwrap();
            for (version, _, sql) in MIGRATIONS.iter().filter(|m| m.0 <= upto) {
                for stmt in legacy_statements(sql) {
                    c.query_drop(stmt).await.unwrap();
                }
                c.exec_drop(
                    "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)",
                    (version, 1_700_000_000_000u64 + u64::from(*version)),
                )
                .await
                .unwrap();
            }
        }
    }
}

fn legacy_statements(sql: &str) -> Vec<String> {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const ALL: &[u32] = &[1, 2, 3];

#[tokio::test]
async fn applies_every_migration_once_and_twice_is_a_no_op() {
    let db = TestDb::new("twice");
    let first = workers::db::migrate(&db.settings).await.unwrap();
    assert_eq!(first, db.every_shard(ALL));
    let second = workers::db::migrate(&db.settings).await.unwrap();
    assert_eq!(second, Vec::<u32>::new());
    let expected = migrations::migrations(MIGRATIONS).unwrap();
    for i in 0..db.shards() {
        let history = db.history(i).await;
        let want: Vec<(u32, String, String)> = expected
            .iter()
            .map(|m| {
                (
                    m.version() as u32,
                    m.name().to_string(),
                    m.checksum().to_string(),
                )
            })
            .collect();
        assert_eq!(history, want, "shard {i}");
        // the schema is there: a table of 0001 with the column type of 0003
        let mut c = db.conn(i).await;
        let collation: Option<String> = c
            .exec_first(
                "SELECT collation_name FROM information_schema.columns \
                 WHERE table_schema = ? AND table_name = 'messages' AND column_name = 'client_msg_id'",
                (&db.settings.name,),
            )
            .await
            .unwrap();
        assert_eq!(collation.as_deref(), Some("utf8mb4_nopad_bin"));
    }
    db.drop().await;
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused() {
    let db = TestDb::new("changed");
    workers::db::migrate(&db.settings).await.unwrap();
    let changed_sql = format!("{}\n-- edited after it was applied\n", MIGRATIONS[1].2);
    let changed = [
        MIGRATIONS[0],
        (2, MIGRATIONS[1].1, changed_sql.as_str()),
        MIGRATIONS[2],
        (4, "later", "CREATE TABLE later_one (x INT)"),
    ];
    let err = migrations::migrate_with(&db.settings, &changed, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("migration V2__exact_identifiers was changed after it was applied")
            && err.contains("checksum"),
        "{err}"
    );
    // nothing after the refusal was applied, on any shard
    for i in 0..db.shards() {
        assert!(!db.has_table(i, "later_one").await, "shard {i}");
    }
    // a recorded migration this build does not have is refused too
    let err = migrations::migrate_with(&db.settings, &MIGRATIONS[..2], Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("V3__exact_client_msg_id is recorded as applied"),
        "{err}"
    );
    db.drop().await;
}

#[tokio::test]
async fn two_runners_at_once_apply_each_migration_once() {
    let db = TestDb::new("race");
    let (a, b) = tokio::join!(
        workers::db::migrate(&db.settings),
        workers::db::migrate(&db.settings)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut both = [a.clone(), b.clone()].concat();
    both.sort();
    let mut want = db.every_shard(ALL);
    want.sort();
    assert_eq!(both, want, "a {a:?}, b {b:?}");
    db.drop().await;
}

#[tokio::test]
async fn a_runner_waits_for_the_lock_and_applies_nothing_without_it() {
    let db = TestDb::new("lock");
    // another runner holds shard 0's lock of this database
    let mut holder = db.conn(0).await;
    let got: Option<i64> = holder
        .exec_first(
            "SELECT GET_LOCK(?, 0)",
            (migrations::lock_name(&db.settings.name),),
        )
        .await
        .unwrap();
    assert_eq!(got, Some(1));
    let err = migrations::migrate_with(&db.settings, MIGRATIONS, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another runner held the migration lock") && err.contains("nothing applied"),
        "{err}"
    );
    assert!(!db.has_table(0, migrations::HISTORY_TABLE).await);
    assert!(!db.has_table(0, "users").await);
    // once it is released, the waiting runner goes on
    let waiting = tokio::spawn({
        let s = db.settings.clone();
        async move { migrations::migrate_with(&s, MIGRATIONS, Duration::from_secs(30)).await }
    });
    holder
        .exec_drop(
            "DO RELEASE_LOCK(?)",
            (migrations::lock_name(&db.settings.name),),
        )
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), db.every_shard(ALL));
    drop(holder);
    db.drop().await;
}

#[tokio::test]
async fn a_database_of_the_old_runner_is_adopted_not_migrated_again() {
    let db = TestDb::new("legacy");
    db.legacy_migrate(3).await;
    assert_eq!(
        workers::db::migrate(&db.settings).await.unwrap(),
        Vec::<u32>::new()
    );
    let expected = migrations::migrations(MIGRATIONS).unwrap();
    for i in 0..db.shards() {
        let history = db.history(i).await;
        assert_eq!(history.len(), 3, "shard {i}");
        for (row, m) in history.iter().zip(&expected) {
            assert_eq!(row.2, m.checksum().to_string(), "shard {i}");
        }
        let mut c = db.conn(i).await;
        let applied_on: Option<String> = c
            .query_first(format!(
                "SELECT applied_on FROM `{}`.{} WHERE version = 1",
                db.settings.name,
                migrations::HISTORY_TABLE
            ))
            .await
            .unwrap();
        assert_eq!(applied_on.as_deref(), Some("2023-11-14T22:13:20Z"));
    }
    // and the next run is a no-op as well
    assert_eq!(
        workers::db::migrate(&db.settings).await.unwrap(),
        Vec::<u32>::new()
    );
    db.drop().await;
}

#[tokio::test]
async fn a_partly_migrated_old_database_gets_only_what_it_lacks() {
    let db = TestDb::new("partial");
    db.legacy_migrate(2).await;
    assert_eq!(
        workers::db::migrate(&db.settings).await.unwrap(),
        db.every_shard(&[3])
    );
    for i in 0..db.shards() {
        let versions: Vec<u32> = db.history(i).await.into_iter().map(|r| r.0).collect();
        assert_eq!(versions, ALL, "shard {i}");
    }
    db.drop().await;
}

#[tokio::test]
async fn a_failing_migration_and_an_unknown_old_version_are_reported() {
    let db = TestDb::new("failing");
    let broken = [MIGRATIONS[0], (2, "broken", "THIS IS NOT SQL")];
    let err = migrations::migrate_with(&db.settings, &broken, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("migrations: shard 0: error applying migration V2__broken: Server error:")
            && err.contains("SQL syntax")
            && err.matches("SQL syntax").count() == 1,
        "{err}"
    );
    // what came before the failing migration stays applied and recorded
    let versions: Vec<u32> = db.history(0).await.into_iter().map(|r| r.0).collect();
    assert_eq!(versions, [1]);
    db.drop().await;

    let db = TestDb::new("unknown");
    db.legacy_migrate(3).await;
    for i in 0..db.shards() {
        let mut c = db.conn(i).await;
        c.query_drop(format!(
            "INSERT INTO `{}`.schema_migrations (version, applied_at_ms) VALUES (9, 0)",
            db.settings.name
        ))
        .await
        .unwrap();
    }
    let err = workers::db::migrate(&db.settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("schema_migrations records migration 9, which this build does not have"),
        "{err}"
    );
    db.drop().await;
}
