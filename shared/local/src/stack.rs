//! One local Batchplane: table, queues, the api router on a loopback port, the stream
//! poller feeding the fanout, and N taskhost processes.

use crate::backend::LocalBackend;
use crate::launching::*;
use crate::options::*;

use crate::streams::{self};

use anyhow::{bail, Context};

use batchplane::api::Service;

use batchplane::aws::{Clients, Endpoints};

use batchplane::domain::placement::PlacementRequest;

use batchplane::queue::Queues;

use batchplane::scaling::launcher::WorkerSpec;

use batchplane::store::placement::ClusterRegistration;

use batchplane::store::Store;

use batchplane::stream::Fanout;

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::watch;

use tokio::task::JoinHandle;

/// The stack's dead-letter queue (a name under its prefix), as the template's
/// `tasks-dlq`.
pub const DEAD_LETTER_QUEUE: &str = "tasks-dlq";

/// A running local stack.
pub struct LocalStack {
    pub api_url: String,
    pub service: Arc<Service>,
    pub fanout: Arc<Fanout>,
    /// Job and task state changes to the stack's event bus (named after its table) on
    /// moto, and Step Functions callbacks.
    pub publisher: Arc<batchplane_publisher::Publisher>,
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
            // moto answers EKS too: clusters registered here are checked against it.
            eks: Some(opts.sqs_url.clone()),
            // ...and CloudWatch Logs, where tasks' output goes.
            logs: Some(opts.sqs_url.clone()),
        };
        let clients = Clients::new(&endpoints).await;
        let store = Store::new(clients.dynamodb.clone(), opts.table.clone());
        store.create_table().await.context("creating the table")?;
        // Pools dead-letter to the stack's own dead-letter queue, as in AWS, which the
        // reconciler reads.
        let dead_letter_arn = {
            let plain = Queues::new(clients.sqs.clone(), opts.queue_prefix.clone());
            plain
                .create(DEAD_LETTER_QUEUE, Duration::from_secs(30))
                .await
                .context("creating the dead-letter queue")?;
            plain.arn(DEAD_LETTER_QUEUE).await?
        };
        let make_queues = || {
            Queues::new(clients.sqs.clone(), opts.queue_prefix.clone())
                .with_dead_letter(dead_letter_arn.clone())
                .with_max_receives(opts.max_receives)
        };
        let queues = make_queues();
        provision(&store, &queues, &opts).await?;
        let service = Arc::new(Service {
            store: store.clone(),
            queues: make_queues(),
            max_attempts: 3,
            job_window: opts.job_window,
            reservation_lease: LOCAL_RESERVATION_LEASE,
            min_attempt_seconds: opts.min_attempt_seconds,
            admins: opts.admins.clone(),
            // No IAM here: the key id a request is signed with names the caller,
            // unchecked.
            identity: opts.identity,
            eks_endpoint: endpoints.eks.clone(),
            logs: Some(batchplane::aws::logs_client(&endpoints).await),
            // Workers here run on the host: a role is recorded, never assumed.
            job_roles: opts.job_roles.clone(),
        });
        let fanout = Fanout::new(store.clone(), make_queues());
        let fanout = Arc::new(fanout.with_window_policy(opts.window_policy()));

        let (stop, stop_rx) = watch::channel(false);
        let (api_url, server) = serve_api(service.clone(), opts.api_port, stop_rx.clone()).await?;

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
        let publisher = Arc::new(publisher(&shared, &store, &opts).await?);
        let pollers = [
            streams::Consumer::Fanout(fanout.clone()),
            streams::Consumer::Publisher(publisher.clone()),
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
            stack.start_autoscaler(every).await?;
        }
        Ok(stack)
    }

    /// The autoscaler on its timer, as a deployment's schedule runs it.
    async fn start_autoscaler(&mut self, every: Duration) -> anyhow::Result<()> {
        self.size_autoscaler_workers().await?;
        self.autoscaler = Some(tokio::spawn(autoscaler_loop(
            self.service.clone(),
            self.backend.clone(),
            self.worker_env().into_iter().collect(),
            every,
            self.stop.subscribe(),
        )));
        Ok(())
    }

    /// Unless settings are stored already, the autoscaler's workers are the size of the
    /// stack's own (a deployment's default worker, 4 vCPU and 16 GiB, may not fit this
    /// machine) and start in seconds, as local processes do.
    async fn size_autoscaler_workers(&self) -> anyhow::Result<()> {
        use batchplane::scaling::Settings;
        let store = &self.service.store;
        if store.autoscaler_settings::<Settings>().await?.is_some() {
            return Ok(());
        }
        let settings = Settings {
            default_worker: batchplane::domain::tiers::Tier {
                cpu_milli: (self.opts.worker_cpus * 1000.0).round() as u32,
                memory_mib: self.opts.worker_memory_mib,
                gpu: 0,
            },
            startup_seconds: 2.0,
            default_task_seconds: 5.0,
            ..Settings::default()
        };
        store.put_autoscaler_settings(&settings).await?;
        Ok(())
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
            service: self.service.clone(),
            reconcile_every: self.opts.reconcile_every_seconds,
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
        let (dynamodb, sqs) = match &o.worker_endpoints {
            Some(w) => (w.dynamodb_url.clone(), w.sqs_url.clone()),
            None => (o.dynamodb_url.clone(), o.sqs_url.clone()),
        };
        let mut env = vec![
            ("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamodb),
            ("AWS_ENDPOINT_URL_SQS".into(), sqs.clone()),
            // moto's, or the fault proxy in front of it: SQS's and CloudWatch Logs'.
            ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".into(), sqs),
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
        ];
        if let Some(uids) = &o.task_uids {
            env.push(("BATCHPLANE_TASK_UIDS".into(), uids.clone()));
        }
        if let Some(how) = &o.memory_enforcement {
            env.push(("BATCHPLANE_MEMORY_ENFORCEMENT".into(), how.clone()));
        }
        if let Some(ms) = o.worker_hold_ms {
            env.push(("BATCHPLANE_HOLD_MS".into(), ms.to_string()));
        }
        if !o.chain_successors {
            env.push(("BATCHPLANE_CHAIN_SUCCESSORS".into(), "false".into()));
        }
        env
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

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown_within(Duration::from_secs(30)).await
    }

    /// Stop everything the stack started, giving its workers `grace` to finish their
    /// running tasks (then they are killed; their tasks run again after their lease on
    /// the next start) and its loops, server and stream pollers a few seconds each
    /// (then they are cut off), so a loaded stack still stops in seconds.
    pub async fn shutdown_within(mut self, grace: Duration) -> anyhow::Result<()> {
        const LOOPS: Duration = Duration::from_secs(5);
        let _ = self.stop.send(true);
        for handle in [self.launcher.take(), self.autoscaler.take()]
            .into_iter()
            .flatten()
        {
            cut_off(handle, LOOPS).await;
        }
        self.backend.stop_all(grace).await;
        if let Some(server) = self.server.take() {
            cut_off(server, LOOPS).await;
        }
        for mut poller in std::mem::take(&mut self.pollers) {
            match tokio::time::timeout(LOOPS, &mut poller).await {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => bail!("a stream poller panicked: {e}"),
                Err(_) => {
                    tracing::warn!("a stream poller did not stop within {LOOPS:?}; cut off");
                    poller.abort();
                }
            }
        }
        Ok(())
    }
}

/// Wait for a task of the stack to end by itself for `within`, else abort it.
async fn cut_off(mut handle: JoinHandle<()>, within: Duration) {
    if tokio::time::timeout(within, &mut handle).await.is_err() {
        tracing::warn!("a loop of the stack did not stop within {within:?}; cut off");
        handle.abort();
    }
}

/// What the stack's table needs before anything runs: its queues (and the pools'), the
/// local clusters, and a quota for the default team.
async fn provision(store: &Store, queues: &Queues, opts: &StackOptions) -> anyhow::Result<()> {
    use batchplane::domain::tiers::WorkerPool;
    // Each queue, its pool for the stack's team, and each pool worker's team pools.
    let pool_queues = opts.queues.iter().flat_map(|q| {
        let own = WorkerPool::new(q.clone(), opts.team.clone(), None).name();
        std::iter::once(own).chain(opts.pools.iter().flat_map(move |p| {
            let team = p.team.clone().unwrap_or_else(|| opts.team.clone());
            [
                WorkerPool::new(q.clone(), team.clone(), None).name(),
                WorkerPool::new(q.clone(), team, Some(p.shape)).name(),
            ]
        }))
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
    Ok(())
}

/// The api router on a loopback port, until `stop`: its URL and the server's task.
async fn serve_api(
    service: Arc<Service>,
    port: u16,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(String, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the API to 127.0.0.1:{}", port))?;
    let api_url = format!("http://{}", listener.local_addr()?);
    let router = api_fn::router(service);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok((api_url, server))
}

/// Job state changes go to an event bus of the stack's own on moto (named after its
/// table), as the publisher function sends them to the deployment's bus.
async fn publisher(
    shared: &aws_config::SdkConfig,
    store: &Store,
    opts: &StackOptions,
) -> anyhow::Result<batchplane_publisher::Publisher> {
    let eventbridge = aws_sdk_eventbridge::Client::from_conf(
        aws_sdk_eventbridge::config::Builder::from(shared)
            .endpoint_url(&opts.sqs_url)
            .build(),
    );
    let sfn = aws_sdk_sfn::Client::from_conf(
        aws_sdk_sfn::config::Builder::from(shared)
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
    Ok(batchplane_publisher::Publisher::new(
        store.clone(),
        eventbridge,
        sfn,
        opts.table.clone(),
    ))
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.backend.kill_all();
        let _ = self.stop.send(true);
    }
}
