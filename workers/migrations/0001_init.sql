-- Every shard has every table; which rows live where is decided by the shard map:
-- users, links and memberships by user id; conversations and messages by conversation id;
-- usernames by username; invite_codes by code; dm_pairs by the pair key.
CREATE TABLE IF NOT EXISTS users (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  username VARCHAR(32) NOT NULL,
  password_hash VARCHAR(255) NOT NULL,
  invite_code CHAR(10) NOT NULL,
  created_at_ms BIGINT UNSIGNED NOT NULL,
  deleted_at_ms BIGINT UNSIGNED NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS usernames (
  username VARCHAR(32) NOT NULL PRIMARY KEY,
  user_id BIGINT UNSIGNED NOT NULL,
  request_key VARCHAR(96) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS invite_codes (
  code CHAR(10) NOT NULL PRIMARY KEY,
  user_id BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS links (
  user_id BIGINT UNSIGNED NOT NULL,
  peer_id BIGINT UNSIGNED NOT NULL,
  peer_username VARCHAR(32) NOT NULL,
  state ENUM('pending','accepted','rejected') NOT NULL,
  direction ENUM('outgoing','incoming') NOT NULL,
  updated_at_ms BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (user_id, peer_id),
  KEY by_state (user_id, direction, state)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS dm_pairs (
  pair_key VARCHAR(48) NOT NULL PRIMARY KEY,
  conversation_id BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS conversations (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  user_lo BIGINT UNSIGNED NOT NULL,
  user_hi BIGINT UNSIGNED NOT NULL,
  last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
  created_at_ms BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS messages (
  conversation_id BIGINT UNSIGNED NOT NULL,
  seq BIGINT UNSIGNED NOT NULL,
  id BIGINT UNSIGNED NOT NULL,
  author_id BIGINT UNSIGNED NOT NULL,
  client_msg_id VARCHAR(64) NOT NULL,
  body TEXT NOT NULL,
  sent_at_ms BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (conversation_id, seq),
  UNIQUE KEY idempotency (conversation_id, author_id, client_msg_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS memberships (
  user_id BIGINT UNSIGNED NOT NULL,
  conversation_id BIGINT UNSIGNED NOT NULL,
  peer_id BIGINT UNSIGNED NOT NULL,
  last_read_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, conversation_id)
) ENGINE=InnoDB;
