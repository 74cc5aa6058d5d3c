//! Apply schema migrations to every shard: `sb-migrate --config migrate.toml`.

fn main() -> anyhow::Result<()> {
    workers::migrate_main()
}
