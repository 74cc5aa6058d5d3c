-- A client_msg_id is an opaque token: two ids that differ in case, accents or trailing spaces are
-- two messages. Under the default utf8mb4_unicode_ci collation "a1" and "A1" matched the same
-- idempotency row, so the second send was answered as a duplicate of the first and never stored.
ALTER TABLE messages MODIFY client_msg_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL;
