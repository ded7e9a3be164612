//! Test support: a local stack per test on shared emulators (started by `make test` /
//! `.ci/run` and named by `BATCHPLANE_TEST_DYNAMODB_URL` / `BATCHPLANE_TEST_SQS_URL`),
//! or on emulators of its own when those are not set.

pub mod browser;

use batchplane_local::emulators::{free_port, Emulators};
use batchplane_local::{LocalStack, StackOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Emulator endpoints for a test, and the emulators themselves if the test started them.
pub struct TestEmulators {
    pub dynamodb_url: String,
    pub sqs_url: String,
    _own: Option<Emulators>,
}

impl TestEmulators {
    pub fn get() -> TestEmulators {
        match (
            std::env::var("BATCHPLANE_TEST_DYNAMODB_URL"),
            std::env::var("BATCHPLANE_TEST_SQS_URL"),
        ) {
            (Ok(d), Ok(s)) => TestEmulators {
                dynamodb_url: d,
                sqs_url: s,
                _own: None,
            },
            _ => {
                let dir = scratch_dir("emulators");
                let port = || free_port().unwrap_or_else(|e| panic!("finding a free port: {e}"));
                let own = Emulators::start(&dir, port(), port()).unwrap_or_else(|e| {
                    panic!("starting emulators (or set BATCHPLANE_TEST_DYNAMODB_URL and BATCHPLANE_TEST_SQS_URL): {e:#}")
                });
                TestEmulators {
                    dynamodb_url: own.dynamodb_url.clone(),
                    sqs_url: own.sqs_url.clone(),
                    _own: Some(own),
                }
            }
        }
    }
}

/// A fresh directory under the system temp dir.
pub fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("batchplane-tests")
        .join(format!("{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A binary built beside the test executable (`target/debug/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("finding the test executable: {e}"));
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not built; run `cargo build --workspace --bins` first (make test does)");
}

/// One test's stack and an HTTP client for its API.
pub struct Harness {
    pub stack: LocalStack,
    pub http: reqwest::Client,
    pub dir: PathBuf,
    pub emulators: TestEmulators,
}

pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Harness {
    pub async fn start(configure: impl FnOnce(&mut StackOptions)) -> Harness {
        capture_warnings();
        let emulators = TestEmulators::get();
        let dir = scratch_dir("stack");
        let mut opts = StackOptions::new(&emulators.dynamodb_url, &emulators.sqs_url, &dir)
            .unwrap_or_else(|e| panic!("the stack's options: {e:#}"));
        opts.workers = 2;
        opts.worker_cpus = 8.0;
        opts.taskhost = binary("taskhost");
        configure(&mut opts);
        let stack = LocalStack::start(opts)
            .await
            .unwrap_or_else(|e| panic!("starting the local stack: {e:#}"));
        Harness {
            stack,
            http: reqwest::Client::new(),
            dir,
            emulators,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.api_url)
    }

    /// A request as `principal` (an access key id the local stack takes on trust, in a
    /// SigV4-shaped `Authorization` header), or unsigned (`anonymous`) with `None`.
    pub async fn request_as(
        &self,
        principal: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> Response {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(p) = principal {
            req = req.header("authorization", signed_as(p));
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        Response {
            status,
            body: body_of(r).await,
        }
    }

    pub async fn post(&self, path: &str, body: &str) -> Response {
        self.request_as(None, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn put_json(&self, path: &str, body: &str) -> Response {
        self.request_as(None, reqwest::Method::PUT, path, Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request_as(None, reqwest::Method::GET, path, None)
            .await
    }

    /// Give `principal` a role on a team (`admin`: no team), as the stack's anonymous
    /// admin.
    pub async fn grant(&self, principal: &str, team: Option<&str>, role: &str) {
        let mut body = serde_json::json!({"principal": principal, "role": role});
        if let Some(t) = team {
            body["team"] = serde_json::json!(t);
        }
        let r = self.post("/v1/access/grants", &body.to_string()).await;
        assert_eq!(r.status, 201, "granting {principal} {role}: {}", r.body);
    }

    /// Submit a spec that must be accepted; returns the job id.
    pub async fn submit(&self, spec: &str) -> String {
        let r = self.post("/v1/jobs", spec).await;
        assert_eq!(r.status, 201, "submit failed: {}", r.body);
        r.body["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job_id in the submission's answer: {}", r.body))
            .to_string()
    }

    pub async fn job(&self, job_id: &str) -> Value {
        let r = self.get(&format!("/v1/jobs/{job_id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Assert that each of the job's tasks `t0` … `t{n-1}` ran exactly once.
    pub async fn assert_each_ran_once(&self, job_id: &str, n: usize) {
        for i in 0..n {
            let task = self.task(job_id, &format!("t{i}")).await;
            assert_eq!(attempts(&task).len(), 1, "{task}");
        }
    }

    pub async fn task(&self, job_id: &str, task_id: &str) -> Value {
        let r = self
            .get(&format!("/v1/jobs/{job_id}/tasks/{task_id}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Wait until the job ends; panics with its last view after `timeout`.
    pub async fn wait(&self, job_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(job_id).await;
            if matches!(
                job["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            ) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job did not finish in {timeout:?}: {job}\nworker logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until a task is in `state`.
    pub async fn wait_task(
        &self,
        job_id: &str,
        task_id: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(job_id, task_id).await;
            if t["state"] == state {
                return t;
            }
            // A task that ended otherwise will not get there: say so now.
            let ended = matches!(
                t["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            );
            assert!(
                !ended,
                "task {task_id} ended {} instead of {state}: {t}",
                t["state"]
            );
            assert!(
                Instant::now() < deadline,
                "task {task_id} not {state} in {timeout:?}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every task of a job, through the paginated list.
    pub async fn all_tasks(&self, job_id: &str, state: Option<&str>, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/v1/jobs/{job_id}/tasks?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            if let Some(t) = &token {
                path.push_str(&format!("&next_token={t}"));
            }
            let r = self.get(&path).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let page = r.body["tasks"]
                .as_array()
                .unwrap_or_else(|| panic!("no tasks in the page: {}", r.body))
                .clone();
            assert!(page.len() <= limit);
            out.extend(page);
            match r.body["next_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return out,
            }
        }
    }

    /// The `batchplane` CLI's stdout for these arguments against this stack; panics with
    /// its stderr when it exits non-zero.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_as(None, args);
        assert!(
            out.status.success(),
            "batchplane {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `batchplane` CLI run with `principal`'s credentials (it signs its requests
    /// with them), or with none (`anonymous`); its whole output, whatever its exit.
    pub fn cli_as(&self, principal: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(binary("batchplane"));
        cmd.args(args)
            .args(["--api-url", &self.stack.api_url])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("BATCHPLANE_API_SIGV4");
        if let Some(p) = principal {
            cmd.env("AWS_ACCESS_KEY_ID", p)
                .env("AWS_SECRET_ACCESS_KEY", "secret");
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("running batchplane {args:?}: {e}"))
    }

    /// Why a task is not running, as the API explains it.
    pub async fn explain(&self, job: &str, task: &str) -> Value {
        let r = self
            .get(&format!("/v1/jobs/{job}/tasks/{task}/explain"))
            .await;
        assert_eq!(r.status, 200, "explain {job}/{task}: {}", r.body);
        r.body
    }

    /// Stop the stack and delete its table and queues.
    pub async fn shutdown(self) {
        self.stack
            .shutdown_and_delete()
            .await
            .unwrap_or_else(|e| panic!("shutting the stack down: {e:#}"));
    }
}

/// An `Authorization` header naming `key` the way SigV4 does; the local stack reads the
/// key id and checks no signature.
pub fn signed_as(key: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={key}/20261201/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=0"
    )
}

/// An empty file at `path` that every task may append to: tasks run as uids of their
/// own, so a file several of them write (a test's record of what ran) must be open to
/// all of them.
pub fn shared_file(path: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "").unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("opening {} to every task: {e}", path.display()));
    path.to_path_buf()
}

/// A copy of one of the workspace's binaries where any task's uid may run it (the build
/// directory may be under a home only its owner can enter).
pub fn binary_for_tasks(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(binary(name), &to)
        .unwrap_or_else(|e| panic!("copying {name} to {}: {e}", dir.display()));
    to
}

/// A response's body as JSON; a body that is not JSON is kept as a string (an error page
/// or a plain-text refusal), so an assertion on it shows what came back.
async fn body_of(r: reqwest::Response) -> Value {
    let text = r
        .text()
        .await
        .unwrap_or_else(|e| format!("(the body could not be read: {e})"));
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// A task view's attempts, or a panic that shows the task.
pub fn attempts(task: &Value) -> &[Value] {
    task["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no attempts in {task}"))
}

/// A store on a fresh table (`<what>-<random>`) of the test emulators.
pub async fn test_store(emu: &TestEmulators, what: &str) -> batchplane::store::Store {
    let clients = batchplane::aws::Clients::new(&batchplane::aws::Endpoints {
        dynamodb: Some(emu.dynamodb_url.clone()),
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let store = batchplane::store::Store::new(
        clients.dynamodb,
        format!("{what}-{}", uuid::Uuid::new_v4().simple()),
    );
    store
        .create_table()
        .await
        .unwrap_or_else(|e| panic!("creating the test table: {e}"));
    store
}

/// A job of `spec` (the native spec) stored straight into `store`, PENDING and already
/// committed, its tasks written on 4 shards for team `default`: a job for the store's
/// own tests, without the API. Returns its id and shard count.
pub async fn stored_job(store: &batchplane::store::Store, spec: &str) -> (String, u32) {
    let spec = batchplane::domain::parse_job_spec(spec).must("the spec");
    let plan = batchplane::domain::plan_job(&spec.tasks);
    let job_id = batchplane::domain::ids::new_job_id(batchplane::store::now_ms());
    let shards = 4;
    store
        .put_job(&batchplane::domain::JobRecord {
            state: batchplane::JobState::Pending,
            total_tasks: plan.len() as u64,
            shard_count: shards,
            ..batchplane::domain::JobRecord::new(&job_id, &spec.name, &spec.team, &spec.queue)
        })
        .await
        .must("storing the job");
    store
        .write_tasks(&job_id, shards, (&spec.queue, "default"), 2, &plan)
        .await
        .must("writing the tasks");
    (job_id, shards)
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn millis(rfc3339: &Value) -> i64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

/// `.must("what")`: the value, or a panic naming what was being done and the error (the
/// store's and SDK's errors carry their cause in their message).
pub trait Must<T> {
    fn must(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> Must<T> for Result<T, E> {
    fn must(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

impl<T> Must<T> for Option<T> {
    fn must(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("{what}: nothing there"))
    }
}

/// A clock a test moves by hand, for the store's leases: it starts at the system's now
/// and stands still until [`ManualClock::advance`], so a lease lapses when the test says
/// and not after a sleep that a loaded machine may stretch.
#[derive(Clone, Debug)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
            batchplane::store::now_ms(),
        )))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }

    /// The store's view of this clock.
    pub fn clock(&self) -> batchplane::store::Clock {
        let at = self.0.clone();
        batchplane::store::Clock::from_fn(move || at.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Poll `check` until it returns `Ok(value)`; after `timeout`, panic with `what` was
/// awaited and the last thing `check` saw (its `Err`), so a failure says why. Polls every
/// 200 ms.
/// The stack's warnings and errors go to the test's captured output, so a failing test
/// shows what the control plane complained about on its way there (`RUST_LOG` widens it).
fn capture_warnings() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _already = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
