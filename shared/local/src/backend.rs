//! The local worker backend: taskhost processes on this machine, with the same contract
//! as the Kubernetes backend's pods (one worker per granted slot, found again by pool,
//! stopped with SIGTERM so running tasks finish).

use batchplane::scaling::launcher::{
    BackendError, LaunchedWorker, WorkerBackend, WorkerPhase, WorkerSpec,
};
use batchplane::store::placement::ClusterRecord;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

struct Process {
    worker: LaunchedWorker,
    child: Child,
    /// SIGTERM sent: the worker is draining.
    stopping: bool,
}

/// Taskhost processes started for placements in local clusters.
pub struct LocalBackend {
    pub taskhost: PathBuf,
    /// Where each worker's own log goes (`<dir>/workers/<name>.log`) and its tasks' logs.
    pub log_dir: PathBuf,
    pub idle_timeout_seconds: u64,
    /// Where workers write their request counts on exit (benchmarks).
    pub metrics_dir: Option<PathBuf>,
    processes: Mutex<Vec<Process>>,
}

impl LocalBackend {
    pub fn new(taskhost: PathBuf, log_dir: PathBuf, idle_timeout_seconds: u64) -> LocalBackend {
        LocalBackend {
            taskhost,
            log_dir,
            idle_timeout_seconds,
            metrics_dir: None,
            processes: Mutex::new(Vec::new()),
        }
    }

    fn processes(&self) -> std::sync::MutexGuard<'_, Vec<Process>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, spec: &WorkerSpec, name: &str, slot: u32) -> std::io::Result<Child> {
        let dir = self.log_dir.join("workers");
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&self.taskhost);
        cmd.args(spec.taskhost_args(slot, name))
            .arg("--idle-timeout-seconds")
            .arg(self.idle_timeout_seconds.to_string())
            .arg("--log-dir")
            .arg(self.log_dir.join("tasks"))
            .envs(&spec.env)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(m) = &self.metrics_dir {
            std::fs::create_dir_all(m)?;
            cmd.arg("--metrics-file")
                .arg(m.join(format!("{name}.json")));
        }
        cmd.spawn()
    }

    /// The process ids of the workers still running (tests signal them).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().iter().map(|p| p.child.id()).collect()
    }

    /// The process id of a worker by name.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.processes()
            .iter()
            .find(|p| p.worker.name == name)
            .map(|p| p.child.id())
    }

    /// Whether the worker with this pid has exited.
    pub fn exited(&self, pid: u32) -> bool {
        self.processes()
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .map(|p| matches!(p.child.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
    }

    /// SIGTERM every worker, wait up to `grace` for them to finish their tasks, then
    /// SIGKILL what is left.
    pub async fn stop_all(&self, grace: std::time::Duration) {
        for p in self.processes().iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + grace;
        loop {
            let running = self
                .processes()
                .iter_mut()
                .filter_map(|p| p.child.try_wait().ok())
                .filter(Option::is_none)
                .count();
            if running == 0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                self.kill_all();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Collect the exit status of every worker that has ended, so none lingers as a
    /// zombie however long the stack runs; its record stays until the autoscaler reaps
    /// its placement (`terminate`). Returns how many workers are still running.
    pub fn reap_exited(&self) -> usize {
        self.processes()
            .iter_mut()
            .filter_map(|p| p.child.try_wait().ok())
            .filter(Option::is_none)
            .count()
    }

    /// SIGKILL every worker still running.
    pub fn kill_all(&self) {
        for p in self.processes().iter_mut() {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

impl WorkerBackend for LocalBackend {
    async fn launch(
        &self,
        cluster: &ClusterRecord,
        spec: &WorkerSpec,
    ) -> Result<Vec<LaunchedWorker>, BackendError> {
        let mut started = Vec::new();
        for &slot in &spec.slots {
            let name =
                batchplane::scaling::launcher::worker_name(&spec.pool, &spec.reservation_id, slot);
            if self.processes().iter().any(|p| p.worker.name == name) {
                continue;
            }
            let child = self
                .spawn(spec, &name, slot)
                .map_err(|e| BackendError::Unavailable {
                    action: format!("start {}", self.taskhost.display()),
                    message: e.to_string(),
                    source: Some(Box::new(e)),
                })?;
            let worker =
                LaunchedWorker::for_slot(name, &cluster.name, spec, slot, WorkerPhase::Running);
            tracing::info!(worker = %worker.name, cluster = %cluster.name, team = %spec.team, pool = %spec.pool,
                pid = child.id(), "local worker started");
            started.push(worker.clone());
            self.processes().push(Process {
                worker,
                child,
                stopping: false,
            });
        }
        Ok(started)
    }

    async fn list(
        &self,
        cluster: &ClusterRecord,
        pool: Option<&str>,
    ) -> Result<Vec<LaunchedWorker>, BackendError> {
        Ok(self
            .processes()
            .iter_mut()
            .filter(|p| p.worker.cluster == cluster.name)
            .filter(|p| pool.is_none_or(|want| p.worker.pool == want))
            .map(|p| {
                let mut w = p.worker.clone();
                w.phase = match p.child.try_wait() {
                    Ok(None) => WorkerPhase::Running,
                    Ok(Some(status)) if status.success() => WorkerPhase::Succeeded,
                    Ok(Some(_)) => WorkerPhase::Failed,
                    Err(_) => WorkerPhase::Unknown,
                };
                w
            })
            .collect())
    }

    /// Local workers are processes on this machine, never on a node of their own:
    /// there is nothing to cordon (the autoscaler's nodes exist only in EC2 here).
    async fn cordon(&self, _cluster: &ClusterRecord, _node: &str) -> Result<(), BackendError> {
        Ok(())
    }

    async fn terminate(&self, _cluster: &ClusterRecord, worker: &str) -> Result<(), BackendError> {
        let mut processes = self.processes();
        if let Some(i) = processes.iter().position(|p| p.worker.name == worker) {
            match processes[i].child.try_wait() {
                // Gone already: forget it.
                Ok(Some(_)) | Err(_) => {
                    processes.remove(i);
                }
                Ok(None) if !processes[i].stopping => {
                    processes[i].stopping = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(processes[i].child.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                Ok(None) => {}
            }
        }
        Ok(())
    }
}
