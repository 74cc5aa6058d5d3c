#[tokio::main]
async fn main() -> anyhow::Result<()> {
    workers::main_for(workers::Role::Dms).await
}
