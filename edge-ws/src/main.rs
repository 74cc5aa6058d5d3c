fn main() -> anyhow::Result<()> {
    edge_ws::start()
}
