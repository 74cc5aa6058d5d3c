-- Columns that identify an account compare byte for byte. Usernames and invite codes are ASCII by
-- the sign-up rules, but the default utf8mb4_unicode_ci collation folds case, width and accents:
-- a fullwidth or accented variant of a username matched the account's directory row.
ALTER TABLE usernames MODIFY username VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
ALTER TABLE users MODIFY username VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
ALTER TABLE invite_codes MODIFY code CHAR(10) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
ALTER TABLE users MODIFY invite_code CHAR(10) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
ALTER TABLE dm_pairs MODIFY pair_key VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
