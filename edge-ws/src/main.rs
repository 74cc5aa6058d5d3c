use edge_ws::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = runtime::settings::load_or_exit();
    runtime::telemetry::init(&settings.edge.id, &settings.log);
    let stop = runtime::shutdown::on_signal();
    Application::build(settings)
        .await?
        .run_until_stopped(stop)
        .await;
    Ok(())
}
