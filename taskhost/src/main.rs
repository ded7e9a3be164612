//! The taskhost binary: `taskhost` runs the worker; `taskhost exec` is the small shim
//! each task runs under, which measures the task's resource use.

use batchplane_taskhost::{shim, worker};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("exec") {
        std::process::exit(shim::main(&args[2..]));
    }
    let opts = worker::Options::parse();
    batchplane::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(worker::run(opts))
}
