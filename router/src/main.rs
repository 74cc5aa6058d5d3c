fn main() -> anyhow::Result<()> {
    router::start()
}
