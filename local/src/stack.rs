//! One local Batchplane: table, queues, the api router on a loopback port, the stream
//! poller feeding the fanout, and N taskhost processes.

use crate::backend::LocalBackend;
use crate::streams::{self, PollerOptions};
use anyhow::{bail, Context};
use batchplane::api::Service;
use batchplane::aws::{Clients, Endpoints};
use batchplane::domain::placement::{PlacementRequest, Resources};
use batchplane::queue::Queues;
use batchplane::scaling::launcher::{launch_workers, WorkerSpec};
use batchplane::store::placement::{ClusterRegistration, PlacementOutcome};
use batchplane::store::Store;
use batchplane::stream::Fanout;
use std::path::{Path, PathBuf};
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
    /// The local "clusters" workers are placed in (each a capacity; all on this machine).
    pub clusters: Vec<LocalCluster>,
    /// The team the stack's own workers are placed for (given a quota if it has none).
    pub team: String,
    /// Run the autoscaler this often (the scheduled Lambda's minute, shortened); its
    /// workers are placed in the local clusters. `None`: only the fixed workers.
    pub autoscale_every: Option<Duration>,
}

/// A local cluster: a name and what placement may put there.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCluster {
    pub name: String,
    pub capacity: Resources,
}

impl std::str::FromStr for LocalCluster {
    type Err = String;
    /// `NAME:CPU:MEMORY_MIB[:GPU]`, e.g. `local-a:64:262144`.
    fn from_str(text: &str) -> Result<LocalCluster, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || format!("{text:?}: expected NAME:CPU:MEMORY_MIB[:GPU]");
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        batchplane::domain::placement::check_label("cluster name", parts[0], 40)?;
        let cpu: f64 = parts[1].parse().map_err(|_| bad())?;
        let mut capacity = Resources {
            cpu_milli: (cpu * 1000.0).round() as u64,
            memory_mib: parts[2].parse().map_err(|_| bad())?,
            ..Default::default()
        };
        if let Some(g) = parts.get(3) {
            capacity.gpus.insert(
                batchplane::domain::placement::ANY_GPU.into(),
                g.parse().map_err(|_| bad())?,
            );
        }
        Ok(LocalCluster {
            name: parts[0].into(),
            capacity,
        })
    }
}

impl std::fmt::Display for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.name,
            batchplane::domain::placement::vcpus(self.capacity.cpu_milli),
            self.capacity.memory_mib
        )?;
        let gpus: u64 = self.capacity.gpus.values().sum();
        if gpus > 0 {
            write!(f, ":{gpus}")?;
        }
        Ok(())
    }
}

/// One worker for a tier shape, offering `slots` times the shape, placed for `team`
/// (the stack's team when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolWorkers {
    pub shape: batchplane::domain::tiers::Tier,
    pub slots: u32,
    pub team: Option<String>,
}

impl std::fmt::Display for PoolWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}x{}",
            self.shape.cpu(),
            self.shape.memory_mib,
            self.shape.gpu,
            self.slots
        )?;
        if let Some(t) = &self.team {
            write!(f, "@{t}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PoolWorkers {
    type Err = String;
    /// `CPU:MEMORY_MIB[:GPU][xSLOTS][@TEAM]`, e.g. `1:1024x4`, `2:8192@vision`.
    fn from_str(full: &str) -> Result<PoolWorkers, String> {
        let (text, team) = match full.split_once('@') {
            Some((t, team)) if !team.is_empty() => (t, Some(team.to_string())),
            Some(_) => return Err(format!("{full:?}: a team name must follow '@'")),
            None => (full, None),
        };
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
            team,
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
            clusters: vec![
                LocalCluster {
                    name: "local-a".into(),
                    capacity: LOCAL_CLUSTER_CAPACITY.clone(),
                },
                LocalCluster {
                    name: "local-b".into(),
                    capacity: LOCAL_CLUSTER_CAPACITY.clone(),
                },
            ],
            team: "default".into(),
            autoscale_every: None,
        })
    }
}

/// What each default local cluster may hold: generous, since local workers share one
/// machine and placement here is about quotas and enable/disable, not real capacity.
static LOCAL_CLUSTER_CAPACITY: std::sync::LazyLock<Resources> =
    std::sync::LazyLock::new(|| Resources {
        cpu_milli: 256_000,
        memory_mib: 1024 * 1024,
        gpus: [(batchplane::domain::placement::ANY_GPU.to_string(), 16)].into(),
    });

/// The quota the stack's team gets when it has none.
fn local_team_quota() -> Resources {
    Resources {
        cpu_milli: 512_000,
        memory_mib: 2 * 1024 * 1024,
        gpus: [(batchplane::domain::placement::ANY_GPU.to_string(), 32)].into(),
    }
}

/// How long a local worker's placement holds without a renewal.
const LOCAL_RESERVATION_LEASE: Duration = Duration::from_secs(300);

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
    /// Job and task state changes to the stack's event bus (named after its table) on
    /// moto, and Step Functions callbacks.
    pub publisher: Arc<batchplane_events::Publisher>,
    /// The SDK configuration the stack's clients were built from (emulator credentials).
    pub shared_config: aws_config::SdkConfig,
    pub opts: StackOptions,
    /// The stack's workers, started through placement in the local clusters.
    pub backend: Arc<LocalBackend>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    /// One stream poller per consumer (the fanout, the events publisher).
    pollers: Vec<JoinHandle<anyhow::Result<()>>>,
    launcher: Option<JoinHandle<()>>,
    autoscaler: Option<JoinHandle<()>>,
    /// Pool workers whose placement was refused, tried again by the launcher loop.
    waiting: Arc<std::sync::Mutex<Vec<PoolWorkers>>>,
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
        for c in &opts.clusters {
            store
                .register_cluster(
                    &c.name,
                    &ClusterRegistration {
                        kind: "local".into(),
                        region: "local".into(),
                        eks_cluster_name: c.name.clone(),
                        endpoint: String::new(),
                        certificate_authority: None,
                        namespace: "local".into(),
                        capacity: c.capacity.clone(),
                    },
                )
                .await
                .with_context(|| format!("registering local cluster {}", c.name))?;
        }
        if !store.team(&opts.team).await?.is_some_and(|t| t.quota_set) {
            store
                .set_team_quota(&opts.team, &local_team_quota())
                .await
                .with_context(|| format!("giving team {} a quota", opts.team))?;
        }
        let service = Arc::new(Service {
            store: store.clone(),
            queues: Queues::new(clients.sqs.clone(), opts.queue_prefix.clone()),
            max_attempts: 3,
            job_window: opts.job_window,
            reservation_lease: LOCAL_RESERVATION_LEASE,
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
        // Job state changes go to an event bus of the stack's own on moto (named after
        // its table), as the events function sends them to the deployment's bus.
        let eventbridge = aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(&shared)
                .endpoint_url(&opts.sqs_url)
                .build(),
        );
        let sfn = aws_sdk_sfn::Client::from_conf(
            aws_sdk_sfn::config::Builder::from(&shared)
                .endpoint_url(&opts.sqs_url)
                .build(),
        );
        match eventbridge
            .create_event_bus()
            .name(&opts.table)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if aws_sdk_eventbridge::error::ProvideErrorMetadata::code(&e)
                    == Some("ResourceAlreadyExistsException") => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "creating the event bus {}: {}",
                    opts.table,
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                ))
            }
        }
        let publisher = Arc::new(batchplane_events::Publisher::new(
            store.clone(),
            eventbridge,
            sfn,
            opts.table.clone(),
        ));
        let pollers = [
            streams::Consumer::Fanout(fanout.clone()),
            streams::Consumer::Events(publisher.clone()),
        ]
        .into_iter()
        .map(|consumer| {
            tokio::spawn(streams::poll(
                streams_client.clone(),
                arn.clone(),
                consumer,
                opts.poller,
                stop_rx.clone(),
            ))
        })
        .collect();

        let mut backend = LocalBackend::new(
            opts.taskhost.clone(),
            opts.log_dir.clone(),
            opts.idle_timeout_seconds,
        );
        backend.metrics_dir = opts.metrics_dir.clone();
        let mut stack = LocalStack {
            api_url,
            service,
            fanout,
            publisher,
            shared_config: shared.clone(),
            opts,
            backend: Arc::new(backend),
            stop,
            server: Some(server),
            pollers,
            launcher: None,
            autoscaler: None,
            waiting: Arc::default(),
        };
        for _ in 0..stack.opts.workers {
            stack.spawn_worker().await?;
        }
        for p in stack.opts.pools.clone() {
            if !stack.try_pool_worker(&p).await? {
                stack
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p);
            }
        }
        stack.launcher = Some(tokio::spawn(launcher_loop(stack.clone_parts())));
        if let Some(every) = stack.opts.autoscale_every {
            stack.autoscaler = Some(tokio::spawn(autoscaler_loop(
                stack.service.clone(),
                stack.backend.clone(),
                stack.worker_env().into_iter().collect(),
                every,
                stack.stop.subscribe(),
            )));
        }
        Ok(stack)
    }

    /// The autoscaler over this stack's clusters and workers, with EC2 nodes when `ec2`
    /// is given (tests point it at moto).
    pub fn autoscaler<'a, E: batchplane::scaling::fleet::Ec2Api>(
        &'a self,
        ec2: Option<&'a E>,
    ) -> batchplane::scaling::Autoscaler<'a, LocalBackend, E> {
        batchplane::scaling::Autoscaler {
            store: &self.service.store,
            queues: &self.service.queues,
            backend: self.backend.as_ref(),
            ec2,
            worker_env: self.worker_env().into_iter().collect(),
            reservation_lease: LOCAL_RESERVATION_LEASE,
        }
    }

    fn clone_parts(&self) -> LauncherParts {
        LauncherParts {
            store: self.service.store.clone(),
            backend: self.backend.clone(),
            waiting: self.waiting.clone(),
            specs: WorkerSpecs {
                opts: self.opts.clone(),
                env: self.worker_env(),
            },
            stop: self.stop.subscribe(),
        }
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
            (
                "BATCHPLANE_RESERVATION_LEASE_SECONDS".into(),
                LOCAL_RESERVATION_LEASE.as_secs().to_string(),
            ),
            ("BATCHPLANE_API_URL".into(), self.api_url.clone()),
        ]
    }

    /// Start one more taskhost on the stack's queues, placed for the stack's team;
    /// returns its pid.
    pub async fn spawn_worker(&mut self) -> anyhow::Result<u32> {
        let specs = self.clone_parts().specs;
        let (request, spec) = specs.general();
        self.launch(&request, &spec).await?.context(
            "placement refused the stack's own worker (see `batchplane teams` and `batchplane clusters`)",
        )
    }

    /// Start a taskhost for one tier shape's pools (`slots` tasks of that shape at once),
    /// placed for its team; an error if placement refuses it.
    pub async fn spawn_pool_worker(&mut self, p: PoolWorkers) -> anyhow::Result<u32> {
        let specs = self.clone_parts().specs;
        let (request, spec) = specs.pool(&p);
        self.launch(&request, &spec)
            .await?
            .with_context(|| format!("placement refused the pool worker {}", p.shape.label()))
    }

    async fn try_pool_worker(&mut self, p: &PoolWorkers) -> anyhow::Result<bool> {
        let specs = self.clone_parts().specs;
        let (request, spec) = specs.pool(p);
        Ok(self.launch(&request, &spec).await?.is_some())
    }

    /// Place and start one worker; its pid, or `None` when placement refused.
    async fn launch(
        &self,
        request: &PlacementRequest,
        spec: &WorkerSpec,
    ) -> anyhow::Result<Option<u32>> {
        launch_one(&self.service.store, &self.backend, request, spec).await
    }

    /// Whether the worker with this pid has exited (idle workers exit by themselves).
    pub fn worker_exited(&mut self, pid: u32) -> bool {
        self.backend.exited(pid)
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.backend.pids()
    }

    /// Send a signal to one worker (tests kill workers mid-task).
    pub fn signal_worker(&self, pid: u32, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Drain the workers (SIGTERM: they finish running tasks and release their
    /// placements), then stop the launcher, the API and the stream pollers.
    /// Shut down, then delete what the stack created on the emulators (its table and
    /// queues), so a suite of stacks on one DynamoDB Local does not pile tables up.
    pub async fn shutdown_and_delete(self) -> anyhow::Result<()> {
        let service = self.service.clone();
        self.shutdown().await?;
        service
            .store
            .delete_table()
            .await
            .context("deleting the stack's table")?;
        service
            .queues
            .delete_all()
            .await
            .context("deleting the stack's queues")?;
        Ok(())
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(launcher) = self.launcher.take() {
            let _ = launcher.await;
        }
        if let Some(autoscaler) = self.autoscaler.take() {
            let _ = autoscaler.await;
        }
        self.backend.stop_all(Duration::from_secs(30)).await;
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        for poller in std::mem::take(&mut self.pollers) {
            match poller.await {
                Ok(r) => r?,
                Err(e) => bail!("a stream poller panicked: {e}"),
            }
        }
        Ok(())
    }
}

/// What the stack's worker requests are made of.
#[derive(Clone)]
struct WorkerSpecs {
    opts: StackOptions,
    env: Vec<(String, String)>,
}

impl WorkerSpecs {
    fn spec(&self, team: &str, pool: String, shape: batchplane::domain::tiers::Tier) -> WorkerSpec {
        WorkerSpec {
            team: team.to_string(),
            pool,
            queues: self.opts.queues.clone(),
            shape,
            tier: None,
            gpu_type: None,
            reservation_id: String::new(),
            slots: Vec::new(),
            capacity_type: None,
            instance_type: None,
            env: self.env.iter().cloned().collect(),
        }
    }

    fn request(
        &self,
        team: &str,
        pool: &str,
        shape: batchplane::domain::tiers::Tier,
    ) -> PlacementRequest {
        PlacementRequest {
            request_id: format!("local-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            team: team.to_string(),
            pool: pool.to_string(),
            cpu: shape.cpu(),
            memory_mib: shape.memory_mib,
            gpu: shape.gpu,
            gpu_type: None,
            workers: 1,
            allow_partial: false,
        }
    }

    /// A worker of the stack's own size for its queues' own pool.
    fn general(&self) -> (PlacementRequest, WorkerSpec) {
        let shape = batchplane::domain::tiers::Tier {
            cpu_milli: (self.opts.worker_cpus * 1000.0).round() as u32,
            memory_mib: self.opts.worker_memory_mib,
            gpu: 0,
        };
        let pool = self
            .opts
            .queues
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into());
        let team = &self.opts.team;
        (
            self.request(team, &pool, shape),
            self.spec(team, pool.clone(), shape),
        )
    }

    /// A worker for one tier shape's pool.
    fn pool(&self, p: &PoolWorkers) -> (PlacementRequest, WorkerSpec) {
        let shape = batchplane::domain::tiers::Tier {
            cpu_milli: p.shape.cpu_milli * p.slots,
            memory_mib: p.shape.memory_mib * u64::from(p.slots),
            gpu: p.shape.gpu * p.slots,
        };
        let pool = batchplane::domain::tiers::WorkerPool::new(
            self.opts
                .queues
                .first()
                .cloned()
                .unwrap_or_else(|| "default".into()),
            Some(p.shape),
        )
        .name();
        let team = p.team.as_deref().unwrap_or(&self.opts.team);
        let mut spec = self.spec(team, pool.clone(), shape);
        spec.tier = Some(p.shape);
        (self.request(team, &pool, shape), spec)
    }
}

async fn launch_one(
    store: &Store,
    backend: &LocalBackend,
    request: &PlacementRequest,
    spec: &WorkerSpec,
) -> anyhow::Result<Option<u32>> {
    let launched = launch_workers(store, backend, request, spec, LOCAL_RESERVATION_LEASE)
        .await
        .with_context(|| {
            format!(
                "launching a worker for team {} pool {}",
                request.team, request.pool
            )
        })?;
    if let Some((cluster, e)) = launched.failed.first() {
        bail!("starting a worker in local cluster {cluster}: {e}");
    }
    match (&launched.outcome, launched.workers.first()) {
        (PlacementOutcome::Granted { .. }, Some(w)) => Ok(backend.pid_of(&w.name)),
        (PlacementOutcome::Refused { reason, .. }, _) => {
            tracing::warn!(team = %request.team, pool = %request.pool, reason, "placement refused a local worker");
            Ok(None)
        }
        (PlacementOutcome::Granted { .. }, None) => Ok(None),
    }
}

/// What the launcher loop needs from the stack.
struct LauncherParts {
    store: Store,
    backend: Arc<LocalBackend>,
    waiting: Arc<std::sync::Mutex<Vec<PoolWorkers>>>,
    specs: WorkerSpecs,
    stop: watch::Receiver<bool>,
}

/// Every second: try the refused pool workers again (a raised quota or an enabled
/// cluster lets them start), release the placements of workers that died without doing
/// so, drain the workers of disabled clusters, and every ten seconds sweep lapsed reservations (the placement function's
/// schedule in AWS).
async fn launcher_loop(mut parts: LauncherParts) {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = parts.stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tick += 1;
        let waiting: Vec<PoolWorkers> = parts
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in waiting {
            let (request, spec) = parts.specs.pool(&p);
            match launch_one(&parts.store, &parts.backend, &request, &spec).await {
                Ok(Some(pid)) => {
                    tracing::info!(pid, pool = %request.pool, team = %request.team, "a refused pool worker was placed");
                    parts
                        .waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|w| w != &p);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "launching a waiting pool worker failed"),
            }
        }
        match parts.store.clusters().await {
            Ok(clusters) => {
                for c in clusters.iter().filter(|c| c.kind == "local") {
                    if let Err(e) =
                        batchplane::scaling::launcher::reap(&parts.store, parts.backend.as_ref(), c)
                            .await
                    {
                        tracing::warn!(error = %e, cluster = %c.name, "reaping ended workers failed");
                    }
                    if let Err(e) =
                        batchplane::scaling::launcher::drain_if_disabled(parts.backend.as_ref(), c)
                            .await
                    {
                        tracing::warn!(error = %e, cluster = %c.name, "draining a disabled cluster failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading clusters failed"),
        }
        if tick.is_multiple_of(10) {
            if let Err(e) = parts
                .store
                .sweep_reservations(batchplane::store::now_ms())
                .await
            {
                tracing::warn!(error = %e, "sweeping reservations failed");
            }
        }
    }
}

/// The autoscaler on a timer (EventBridge's schedule in AWS), with the local clusters'
/// fixed capacity (no EC2 nodes).
async fn autoscaler_loop(
    service: Arc<Service>,
    backend: Arc<LocalBackend>,
    worker_env: std::collections::BTreeMap<String, String>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let autoscaler = batchplane::scaling::Autoscaler::<_, batchplane::scaling::NoEc2> {
            store: &service.store,
            queues: &service.queues,
            backend: backend.as_ref(),
            ec2: None,
            worker_env: worker_env.clone(),
            reservation_lease: LOCAL_RESERVATION_LEASE,
        };
        if let Err(e) = autoscaler.tick(batchplane::store::now_ms()).await {
            tracing::warn!(error = %e, "autoscaler tick failed");
        }
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.backend.kill_all();
        let _ = self.stop.send(true);
    }
}
