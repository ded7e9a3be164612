//! Logging setup: structured `tracing`, JSON in Lambda, compact text on a terminal.

/// Install the global subscriber once. `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if in_lambda {
        builder.json().without_time().try_init()
    } else {
        builder.compact().try_init()
    };
}
