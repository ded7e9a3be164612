//! One local Batchplane: table, queues, the api router on a loopback port, the stream
//! poller feeding the fanout, and N taskhost processes.

use crate::streams::{self, PollerOptions};
use anyhow::{bail, Context};
use batchplane::aws::{Clients, Endpoints};
use batchplane::fanout::Fanout;
use batchplane::queue::Queues;
use batchplane::service::Service;
use batchplane::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub dynamodb_url: String,
    pub sqs_url: String,
    /// Table and queue-name prefix: unique per stack, so stacks can share emulators.
    pub table: String,
    pub queue_prefix: String,
    pub queues: Vec<String>,
    /// 0: any free port.
    pub api_port: u16,
    pub workers: usize,
    pub worker_cpus: f64,
    pub worker_memory_mib: u64,
    pub lease_seconds: u64,
    /// 0: workers never exit for idleness.
    pub idle_timeout_seconds: u64,
    pub log_dir: PathBuf,
    pub taskhost: PathBuf,
    pub poller: PollerOptions,
    /// Where workers write their request counts on exit (benchmarks).
    pub metrics_dir: Option<PathBuf>,
    /// Children of one array job queued at once.
    pub job_window: u32,
    /// Tier pools to run a worker for, each with how many tasks of its shape the worker
    /// runs at once: the worker serves that shape's pool of every queue.
    pub pools: Vec<PoolWorkers>,
}

/// One worker for a tier shape, offering `slots` times the shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolWorkers {
    pub shape: batchplane::domain::tiers::Tier,
    pub slots: u32,
}

impl std::str::FromStr for PoolWorkers {
    type Err = String;
    /// `CPU:MEMORY_MIB[:GPU][xSLOTS]`, e.g. `1:1024x4`.
    fn from_str(text: &str) -> Result<PoolWorkers, String> {
        let (shape, slots) = match text.rsplit_once('x') {
            Some((s, n)) => (
                s,
                n.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{text:?}: slots {n:?} must be a positive count"))?,
            ),
            None => (text, 1),
        };
        Ok(PoolWorkers {
            shape: batchplane::domain::tiers::Tier::parse_shape(shape)?,
            slots,
        })
    }
}

impl StackOptions {
    /// Defaults for a stack on the given emulators, with names unique to this stack.
    pub fn new(dynamodb_url: &str, sqs_url: &str, log_dir: &Path) -> anyhow::Result<StackOptions> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(StackOptions {
            dynamodb_url: dynamodb_url.into(),
            sqs_url: sqs_url.into(),
            table: format!("batchplane-{}", &id[..8]),
            queue_prefix: format!("bp{}-", &id[..8]),
            queues: vec!["default".into()],
            api_port: 0,
            workers: 2,
            worker_cpus: 4.0,
            worker_memory_mib: 4096,
            lease_seconds: 30,
            idle_timeout_seconds: 0,
            log_dir: log_dir.to_path_buf(),
            taskhost: taskhost_exe()?,
            poller: PollerOptions::default(),
            metrics_dir: None,
            job_window: 256,
            pools: Vec::new(),
        })
    }
}

/// The taskhost binary: `BATCHPLANE_TASKHOST`, or beside the running executable (for
/// `target/debug/batchplane`), or one folder up (for test binaries in `target/debug/deps`).
pub fn taskhost_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHPLANE_TASKHOST") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("taskhost");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the taskhost binary near {}; build it (cargo build -p batchplane-taskhost) or set BATCHPLANE_TASKHOST",
        exe.display()
    )
}

/// A running local stack.
pub struct LocalStack {
    pub api_url: String,
    pub service: Arc<Service>,
    pub fanout: Arc<Fanout>,
    pub opts: StackOptions,
    workers: Vec<Child>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    poller: Option<JoinHandle<anyhow::Result<()>>>,
}

impl LocalStack {
    pub async fn start(opts: StackOptions) -> anyhow::Result<LocalStack> {
        let endpoints = Endpoints {
            dynamodb: Some(opts.dynamodb_url.clone()),
            sqs: Some(opts.sqs_url.clone()),
        };
        let clients = Clients::new(&endpoints).await;
        let store = Store::new(clients.dynamodb.clone(), opts.table.clone());
        store.create_table().await.context("creating the table")?;
        let queues = Queues::new(clients.sqs.clone(), opts.queue_prefix.clone());
        let pool_queues = opts.queues.iter().flat_map(|q| {
            opts.pools.iter().map(move |p| {
                batchplane::domain::tiers::WorkerPool::new(q.clone(), Some(p.shape)).name()
            })
        });
        for q in opts.queues.clone().into_iter().chain(pool_queues) {
            queues
                .create(&q, Duration::from_secs(opts.lease_seconds))
                .await
                .with_context(|| format!("creating queue {q}"))?;
        }
        let service = Arc::new(Service {
            store: store.clone(),
            queues: Queues::new(clients.sqs.clone(), opts.queue_prefix.clone()),
            max_attempts: 3,
            job_window: opts.job_window,
        });
        let fanout = Arc::new(Fanout::new(
            store.clone(),
            Queues::new(clients.sqs.clone(), opts.queue_prefix.clone()),
        ));

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.api_port))
            .await
            .with_context(|| format!("binding the API to 127.0.0.1:{}", opts.api_port))?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let (stop, stop_rx) = watch::channel(false);
        let router = api_fn::router(service.clone());
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await;
        });

        let shared = batchplane::aws::sdk_config(&endpoints).await;
        let streams_client = aws_sdk_dynamodbstreams::Client::from_conf(
            aws_sdk_dynamodbstreams::config::Builder::from(&shared)
                .endpoint_url(&opts.dynamodb_url)
                .build(),
        );
        let arn = store
            .stream_arn()
            .await?
            .context("the table has no stream")?;
        let poller = tokio::spawn(streams::poll(
            streams_client,
            arn,
            fanout.clone(),
            opts.poller,
            stop_rx,
        ));

        let mut stack = LocalStack {
            api_url,
            service,
            fanout,
            opts,
            workers: Vec::new(),
            stop,
            server: Some(server),
            poller: Some(poller),
        };
        for _ in 0..stack.opts.workers {
            stack.spawn_worker()?;
        }
        for p in stack.opts.pools.clone() {
            stack.spawn_pool_worker(p)?;
        }
        Ok(stack)
    }

    /// The environment a local taskhost gets.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let o = &self.opts;
        vec![
            ("AWS_ENDPOINT_URL_DYNAMODB".into(), o.dynamodb_url.clone()),
            ("AWS_ENDPOINT_URL_SQS".into(), o.sqs_url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "local".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "local".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("BATCHPLANE_TABLE".into(), o.table.clone()),
            ("BATCHPLANE_QUEUE_PREFIX".into(), o.queue_prefix.clone()),
            (
                "BATCHPLANE_LEASE_SECONDS".into(),
                o.lease_seconds.to_string(),
            ),
            ("BATCHPLANE_API_URL".into(), self.api_url.clone()),
        ]
    }

    /// Start one more taskhost on the stack's queues; returns its pid.
    pub fn spawn_worker(&mut self) -> anyhow::Result<u32> {
        let (cpus, memory) = (self.opts.worker_cpus, self.opts.worker_memory_mib);
        self.spawn_taskhost(&format!("local-{}", self.workers.len()), |cmd| {
            cmd.arg("--cpus")
                .arg(cpus.to_string())
                .arg("--memory-mib")
                .arg(memory.to_string());
        })
    }

    /// Start a taskhost for one tier shape's pools (`slots` tasks of that shape at once).
    pub fn spawn_pool_worker(&mut self, p: PoolWorkers) -> anyhow::Result<u32> {
        let name = format!("local-{}-{}", self.workers.len(), p.shape.label());
        self.spawn_taskhost(&name, |cmd| {
            cmd.arg("--tier")
                .arg(format!(
                    "{}:{}:{}",
                    p.shape.cpu(),
                    p.shape.memory_mib,
                    p.shape.gpu
                ))
                .arg("--cpus")
                .arg((p.shape.cpu() * f64::from(p.slots)).to_string())
                .arg("--memory-mib")
                .arg((p.shape.memory_mib * u64::from(p.slots)).to_string())
                .arg("--gpus")
                .arg((p.shape.gpu * p.slots).to_string());
        })
    }

    fn spawn_taskhost(
        &mut self,
        name: &str,
        shape: impl FnOnce(&mut Command),
    ) -> anyhow::Result<u32> {
        let dir = self.opts.log_dir.join("workers");
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&self.opts.taskhost);
        cmd.arg("--queue")
            .arg(self.opts.queues.join(","))
            .arg("--worker-id")
            .arg(format!("{name}-{}", std::process::id()));
        shape(&mut cmd);
        cmd.arg("--idle-timeout-seconds")
            .arg(self.opts.idle_timeout_seconds.to_string())
            .arg("--log-dir")
            .arg(self.opts.log_dir.join("tasks"))
            .envs(self.worker_env())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(m) = &self.opts.metrics_dir {
            std::fs::create_dir_all(m)?;
            cmd.arg("--metrics-file")
                .arg(m.join(format!("{name}.json")));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.opts.taskhost.display()))?;
        let pid = child.id();
        self.workers.push(child);
        Ok(pid)
    }

    /// Whether the worker with this pid has exited (idle workers exit by themselves).
    pub fn worker_exited(&mut self, pid: u32) -> bool {
        self.workers
            .iter_mut()
            .find(|c| c.id() == pid)
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|c| c.id()).collect()
    }

    /// Send a signal to one worker (tests kill workers mid-task).
    pub fn signal_worker(&self, pid: u32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Drain the workers (SIGTERM: they finish running tasks), then stop the API and
    /// the poller.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for w in &self.workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for w in &mut self.workers {
            loop {
                if w.try_wait()?.is_some() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = w.kill();
                    let _ = w.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(poller) = self.poller.take() {
            match poller.await {
                Ok(r) => r?,
                Err(e) => bail!("the stream poller panicked: {e}"),
            }
        }
        Ok(())
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Ok(None) = w.try_wait() {
                let _ = w.kill();
                let _ = w.wait();
            }
        }
        let _ = self.stop.send(true);
    }
}
