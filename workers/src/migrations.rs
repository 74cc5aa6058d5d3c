//! Schema migrations (`workers/migrations/NNNN_<name>.sql`), applied by `refinery` on every
//! shard's primary (the replicas receive them through replication).
//!
//! - Each migration runs once per shard, in version order, in its own transaction with the row
//!   that records it in `refinery_schema_history` (version, name, time, checksum of name, version
//!   and text). A file holds any number of statements, sent as one multi-statement query.
//! - A migration whose text changed after it was applied is refused (checksum), and so is a
//!   recorded version this build does not have: nothing further is applied on that shard.
//! - One runner at a time per database and shard: the runner holds the MariaDB named lock
//!   `sb-migrate:<database>` (`GET_LOCK`) while it adopts and applies; a second one waits for it
//!   (up to [`LOCK_WAIT`]) and then finds nothing left to apply.
//! - Databases migrated by the runner before refinery (table `schema_migrations`: version and
//!   time, no checksum) are adopted: each version recorded there and missing from the history is
//!   recorded with the checksum of this build's file, never applied again. The old table is left
//!   as it is and no longer written.

use crate::settings::{DatabaseSettings, ShardSettings};
use crate::{db, Error, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, Pool};
use refinery::error::Kind;
use refinery::{Migration, Runner};
use std::time::Duration;

/// Every migration: version, name, SQL. Never change one that was applied anywhere (the checksum
/// refuses it): add a new one with the next version.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "exact_identifiers",
        include_str!("../migrations/0002_exact_identifiers.sql"),
    ),
    (
        3,
        "exact_client_msg_id",
        include_str!("../migrations/0003_exact_client_msg_id.sql"),
    ),
];

/// Where refinery records applied migrations (its default name).
pub const HISTORY_TABLE: &str = "refinery_schema_history";
/// What the runner before refinery recorded (version, applied_at_ms): adopted, not written.
pub const LEGACY_TABLE: &str = "schema_migrations";
/// How long a runner waits for another one holding the same database's migration lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The same table refinery creates when it first runs, created here before adopting.
const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS refinery_schema_history(version int4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255))";

/// refinery's migrations from a list of (version, name, SQL).
pub fn migrations(list: &[(u32, &str, &str)]) -> Result<Vec<Migration>> {
    list.iter()
        .map(|(version, name, sql)| {
            let bad =
                |why: String| Error::Migration(format!("migration {version} {name:?}: {why}"));
            let m = Migration::unapplied(&format!("V{version}__{name}"), sql)
                .map_err(|e| bad(e.to_string()))?;
            // refinery takes the leading word characters as the name and ignores the rest
            if m.name() != *name {
                return Err(bad("a name is letters, digits and `_` only".into()));
            }
            Ok(m)
        })
        .collect()
}

/// The named lock of one database's migrations (MariaDB lock names are server-wide).
pub fn lock_name(database: &str) -> String {
    format!("sb-migrate:{database}").chars().take(64).collect()
}

/// Create the database if needed and apply pending migrations on every shard's primary. Returns
/// the versions applied, shard after shard.
pub async fn migrate(s: &DatabaseSettings) -> Result<Vec<u32>> {
    migrate_with(s, MIGRATIONS, LOCK_WAIT).await
}

/// [`migrate`] with another list of migrations and lock wait (tests).
pub async fn migrate_with(
    s: &DatabaseSettings,
    list: &[(u32, &str, &str)],
    lock_wait: Duration,
) -> Result<Vec<u32>> {
    let migrations = migrations(list)?;
    let mut applied = Vec::new();
    for (index, shard) in s.shards.iter().enumerate() {
        applied.extend(on_shard(s, index, shard, &migrations, lock_wait).await?);
    }
    Ok(applied)
}

async fn on_shard(
    s: &DatabaseSettings,
    index: usize,
    shard: &ShardSettings,
    migrations: &[Migration],
    lock_wait: Duration,
) -> Result<Vec<u32>> {
    let database = s.name.replace('`', "");
    let server = Pool::new(db::opts(s, &shard.primary, None)?);
    let mut lock = server.get_conn().await?;
    lock.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
        .await?;
    let name = lock_name(&database);
    let got: Option<Option<i64>> = lock
        .exec_first("SELECT GET_LOCK(?, ?)", (&name, lock_wait.as_secs()))
        .await?;
    if got.flatten() != Some(1) {
        drop(lock);
        server.disconnect().await?;
        return Err(Error::Migration(format!(
            "shard {index}: another runner held the migration lock {name:?} for more than {} s; \
             nothing applied",
            lock_wait.as_secs()
        )));
    }
    let outcome = locked(s, index, shard, migrations, &mut lock, &database).await;
    // Closing the connection would release the lock as well; this says so at once.
    let released = lock.exec_drop("DO RELEASE_LOCK(?)", (&name,)).await;
    drop(lock);
    server.disconnect().await?;
    let applied = outcome?;
    released?;
    Ok(applied)
}

/// Adopt a legacy history, then let refinery apply what is pending; under the lock.
async fn locked(
    s: &DatabaseSettings,
    index: usize,
    shard: &ShardSettings,
    migrations: &[Migration],
    c: &mut Conn,
    database: &str,
) -> Result<Vec<u32>> {
    c.query_drop(format!("USE `{database}`")).await?;
    adopt_legacy(c, index, migrations).await?;
    let mut pool = Pool::new(db::opts(s, &shard.primary, Some(database))?);
    let report = Runner::new(migrations)
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut pool)
        .await;
    pool.disconnect().await?;
    let report = report.map_err(|e| refused(index, &e))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.version() as u32)
        .collect())
}

/// Record in refinery's history every version the legacy table has and the history lacks.
async fn adopt_legacy(c: &mut Conn, index: usize, migrations: &[Migration]) -> Result<()> {
    let legacy: Option<String> = c
        .exec_first(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
            (LEGACY_TABLE,),
        )
        .await?;
    if legacy.is_none() {
        return Ok(());
    }
    c.query_drop(CREATE_HISTORY).await?;
    let pending: Vec<(u32, u64)> = c
        .query(format!(
            "SELECT l.version, l.applied_at_ms FROM {LEGACY_TABLE} l \
             LEFT JOIN {HISTORY_TABLE} h ON h.version = l.version \
             WHERE h.version IS NULL ORDER BY l.version"
        ))
        .await?;
    for (version, at_ms) in pending {
        let m = migrations
            .iter()
            .find(|m| m.version() as u32 == version)
            .ok_or_else(|| {
                Error::Migration(format!(
                    "shard {index}: {LEGACY_TABLE} records migration {version}, which this build \
                     does not have"
                ))
            })?;
        c.exec_drop(
            format!(
                "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) \
                 VALUES (?, ?, ?, ?)"
            ),
            (version, m.name(), rfc3339(at_ms), m.checksum().to_string()),
        )
        .await?;
        tracing::info!(
            shard = index,
            version,
            "adopted a migration of {LEGACY_TABLE}"
        );
    }
    Ok(())
}

/// A refinery error as ours, saying what to do about a changed or unknown migration.
fn refused(index: usize, e: &refinery::Error) -> Error {
    Error::Migration(match e.kind() {
        Kind::DivergentVersion(applied, now) => format!(
            "shard {index}: migration {applied} was changed after it was applied (recorded: \
             {applied} checksum {}; this build: {now} checksum {}); restore it and put the change \
             in a new migration",
            applied.checksum(),
            now.checksum()
        ),
        Kind::MissingVersion(m) => format!(
            "shard {index}: migration {m} is recorded as applied but this build does not have \
             it, or it was never applied while later ones were"
        ),
        // what refinery was doing, then the database's error
        Kind::Connection(doing, cause) => format!("shard {index}: {doing}: {cause}"),
        _ => format!("shard {index}: {e}"),
    })
}

/// Milliseconds since the epoch as an RFC 3339 UTC time to the second (what refinery stores and
/// parses).
pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .expect("a time in u64 milliseconds formats")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn names_versions_and_locks() {
        let m = migrations(MIGRATIONS).unwrap();
        let names: Vec<String> = m.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            [
                "V1__init",
                "V2__exact_identifiers",
                "V3__exact_client_msg_id"
            ]
        );
        assert!(migrations(&[(1, "bad name", "SELECT 1")]).is_err());
        assert!(migrations(&[(1, "", "SELECT 1")]).is_err());
        assert_eq!(lock_name("switchboard"), "sb-migrate:switchboard");
        assert_eq!(lock_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn a_changed_text_changes_the_checksum() {
        let a = migrations(&[(1, "a", "SELECT 1")]).unwrap();
        let b = migrations(&[(1, "a", "SELECT 2")]).unwrap();
        assert_ne!(a[0].checksum(), b[0].checksum());
        let again = migrations(&[(1, "a", "SELECT 1")]).unwrap();
        assert_eq!(a[0].checksum(), again[0].checksum());
    }

    /// A refinery error other than a changed, missing or unreachable migration is still ours:
    /// it names the shard, then refinery's own words.
    #[test]
    fn any_other_refinery_error_names_its_shard() {
        let e = Migration::unapplied("no version here", "SELECT 1").unwrap_err();
        assert!(matches!(e.kind(), Kind::InvalidName));
        let want = format!("shard 2: {e}");
        assert!(want.contains("V{number}__{name}"), "{want}");
        let got = refused(2, &e);
        assert!(matches!(&got, Error::Migration(m) if *m == want), "{got}");
    }
}
