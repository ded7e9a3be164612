pub async fn run(_a: &BenchArgs) -> anyhow::Result<u8> {
    Ok(0)
}
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}
