//! Apply schema migrations to every shard: `sb-migrate --config migrate.toml`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: workers::settings::MigrateSettings = runtime::settings::load_or_exit();
    let _telemetry =
        runtime::telemetry::init_or_exit("sb-migrate", &Default::default(), &Default::default());
    let applied = workers::db::migrate(&settings.database).await?;
    println!(
        "migrations applied on {} shard(s): {:?}",
        settings.database.shards.len(),
        applied
    );
    Ok(())
}
