//! MariaDB server error numbers the workers act on, by name (the names of MariaDB's error
//! reference, `include/mysqld_error.h`).

/// A Galera node that cannot take statements now: "WSREP has not yet prepared node for
/// application use" (outside the cluster's primary component, or still joining it).
pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
/// A commit failed in the storage engine or, on a Galera node, in replication ("Error while
/// appending streaming replication fragment", "Not connected to Primary Component").
pub const ER_ERROR_DURING_COMMIT: u16 = 1180;
/// A unique key already holds the value (`INSERT` of an existing username, pair, message id).
pub const ER_DUP_ENTRY: u16 = 1062;
/// The server has no connection slot left.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
/// A row lock was not granted within `innodb_lock_wait_timeout`.
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// The transaction was chosen as a deadlock victim and rolled back.
pub const ER_LOCK_DEADLOCK: u16 = 1213;
/// The server runs with an option that forbids the statement: `--read-only` on a replica or a
/// demoted primary.
pub const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
/// The server is in read-only mode.
pub const ER_READ_ONLY_MODE: u16 = 1836;
/// The connection was killed (a failover, `KILL`, a server shutting down).
pub const ER_CONNECTION_KILLED: u16 = 1927;

/// Server errors that the same statement may not meet again later: busy, locked (a Galera
/// certification conflict is a deadlock too), or a shard between primaries or between Galera
/// nodes. Any other server error is the record's own fault (poison).
pub fn retry_may_fix(code: u16) -> bool {
    matches!(
        code,
        ER_LOCK_WAIT_TIMEOUT
            | ER_LOCK_DEADLOCK
            | ER_UNKNOWN_COM_ERROR
            | ER_ERROR_DURING_COMMIT
            | ER_OPTION_PREVENTS_STATEMENT
            | ER_READ_ONLY_MODE
            | ER_CON_COUNT_ERROR
            | ER_CONNECTION_KILLED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_locked_and_read_only_servers_are_worth_a_retry() {
        for code in [1205, 1213, 1290, 1836, 1040, 1927, 1047, 1180] {
            assert!(retry_may_fix(code), "{code}");
        }
        for code in [ER_DUP_ENTRY, 1064, 1146, 1406] {
            assert!(!retry_may_fix(code), "{code}");
        }
    }
}
