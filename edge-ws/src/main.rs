use edge_ws::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = runtime::settings::load_or_exit();
    let telemetry =
        runtime::telemetry::init_or_exit(&settings.edge.id, &settings.log, &settings.trace);
    let stop = runtime::shutdown::on_signal();
    Application::build(settings)
        .await?
        .run_until_stopped(stop)
        .await;
    telemetry.shutdown().await;
    Ok(())
}
