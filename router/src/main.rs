#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: router::Settings = runtime::settings::load_or_exit();
    runtime::telemetry::init("router", &settings.log);
    let stop = runtime::shutdown::on_signal();
    router::run(settings, stop).await?;
    Ok(())
}
