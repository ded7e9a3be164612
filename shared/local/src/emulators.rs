//! DynamoDB Local and moto's server as child processes, through `scripts/emulators.sh`
//! (one script installs and starts them for the CLI, the tests and CI alike).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The script that installs and starts the emulators.
pub fn script() -> PathBuf {
    if let Some(p) = std::env::var_os("BATCHPLANE_EMULATORS_SCRIPT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/emulators.sh")
}

/// Running emulators, stopped on drop.
#[derive(Debug)]
pub struct Emulators {
    pub dir: PathBuf,
    pub dynamodb_url: String,
    pub sqs_url: String,
    stopped: bool,
}

/// A free TCP port on loopback (the OS picks; racy only against other port pickers).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Emulators {
    /// Install if needed and start both emulators, waiting until each answers.
    pub fn start(dir: &Path, dynamodb_port: u16, sqs_port: u16) -> anyhow::Result<Emulators> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir)
            .arg(dynamodb_port.to_string())
            .arg(sqs_port.to_string())
            .status()
            .with_context(|| format!("running {}", script().display()))?;
        if !status.success() {
            bail!(
                "starting the emulators failed ({status}); see {}/dynamodb.log and moto.log",
                dir.display()
            );
        }
        Ok(Emulators {
            dir: dir.to_path_buf(),
            dynamodb_url: format!("http://127.0.0.1:{dynamodb_port}"),
            sqs_url: format!("http://127.0.0.1:{sqs_port}"),
            stopped: false,
        })
    }

    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new("bash")
                .arg(script())
                .arg("stop")
                .arg(&self.dir)
                .status();
            self.stopped = true;
        }
    }

    /// Keep them running after this handle is dropped (`batchplane dev up`).
    pub fn detach(mut self) {
        self.stopped = true;
    }
}

impl Drop for Emulators {
    fn drop(&mut self) {
        self.stop();
    }
}
