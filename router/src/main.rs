#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: router::Settings = runtime::settings::load_or_exit();
    let telemetry = runtime::telemetry::init_or_exit("router", &settings.log, &settings.trace);
    let stop = runtime::shutdown::on_signal();
    let result = router::run(settings, stop).await;
    telemetry.shutdown().await;
    Ok(result?)
}
