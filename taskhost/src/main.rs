//! The taskhost binary: `taskhost` runs the worker; `taskhost exec` is the small shim
//! each task runs under, which measures the task's resource use; `taskhost install
//! PATH` copies this (static) binary to PATH, which is how a worker pod's init
//! container puts it into a volume the task's own image then runs it from.

use batchplane_taskhost::{shim, worker};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("exec") {
        std::process::exit(shim::main(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some("install") {
        let Some(dest) = args.get(2) else {
            anyhow::bail!("usage: taskhost install PATH");
        };
        let to = batchplane_taskhost::install(std::path::Path::new(dest))?;
        println!("installed {}", to.display());
        return Ok(());
    }
    let opts = worker::Options::parse();
    batchplane::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(worker::run(opts))
}
