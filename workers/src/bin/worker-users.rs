fn main() -> anyhow::Result<()> {
    workers::start(workers::Role::Users)
}
