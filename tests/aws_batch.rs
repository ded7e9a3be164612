//! AWS Batch compatibility: boto3's `batch` client and the AWS CLI (installed from PyPI
//! by `make test`) drive a local stack through `tests/clients/batch_clients.py`. Each
//! scenario is one test, so they run side by side.

use batchplane_testing::Harness;
use std::path::PathBuf;

fn clients_python() -> PathBuf {
    if let Some(p) = std::env::var_os("BATCHPLANE_CLIENTS_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/batchplane/venv-awscli-1.46.2/bin/python")
}

async fn scenario(name: &str, configure: impl FnOnce(&mut batchplane_local::StackOptions)) {
    scenario_with_grants(name, configure, &[]).await
}

/// A scenario after granting `(principal, team, role)`s.
async fn scenario_with_grants(
    name: &str,
    configure: impl FnOnce(&mut batchplane_local::StackOptions),
    grants: &[(&str, &str, &str)],
) {
    let h = Harness::start(|o| {
        // Timeouts of a few seconds keep the timeout scenario short; AWS's floor is 60 s.
        o.min_attempt_seconds = 1;
        // The scenarios' job queue: workers serve it beside the default one.
        o.queues = vec!["default".into(), "jq".into()];
        // boto3's and the AWS CLI's keys are the deployment's admins here.
        o.admins.extend(["AKIDBATCHTEST".into(), "AKIDCLI".into()]);
        configure(o)
    })
    .await;
    for (principal, team, role) in grants {
        h.grant(principal, Some(team), role).await;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/batch_clients.py");
    let api = h.stack.api_url.clone();
    // Where the tasks' output is in CloudWatch Logs (moto's).
    let logs = h.stack.opts.sqs_url.clone();
    let python = clients_python();
    let scenario_arg = name.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(&scenario_arg)
            .arg(&api)
            .arg(&logs)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e} (make test installs it)", python.display()))
    })
    .await
    .unwrap_or_else(|e| panic!("scenario {name}: the client task failed: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    h.shutdown().await;
    assert!(
        out.status.success(),
        "scenario {name} failed\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_jobs_and_definitions_do_not_exist_through_boto3() {
    scenario_with_grants(
        "tenancy",
        |o| o.workers = 0,
        &[
            ("AKIDALICE", "research", "member"),
            ("AKIDBOB", "finance", "member"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_queues_environments_policies_and_tags() {
    scenario("resources", |o| o.workers = 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_child_array_runs_and_lists_page_by_page() {
    scenario("array", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_to_n_releases_each_child_as_its_predecessor_succeeds() {
    scenario("n_to_n", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_children_run_one_after_another_and_a_failure_stops_the_rest() {
    scenario("sequential", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_250_dependencies() {
    scenario("many_dependencies", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_strategy_evaluate_on_exit_and_attempt_timeouts() {
    scenario("retries", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_terminate() {
    scenario("cancel_terminate", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_sign_for_api_gateway_with_the_plugin() {
    scenario("signing", |o| {
        o.identity = batchplane::config::IdentitySource::ApiGatewayKeyId;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_running_array_waits_for_its_running_children() {
    scenario("array_stop", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_is_not_starved_by_a_million_child_job() {
    scenario("fair_share", |o| o.job_window = 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_exit_codes_out_of_memory_and_list_filters_are_aws_batchs() {
    scenario("semantics", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_job_roles_are_honoured_and_what_cannot_be_is_refused() {
    // As a deployment lists the job roles its pods can run as.
    scenario("images", |o| {
        o.job_roles = Some(["arn:aws:iam::123456789012:role/batch-reader".to_string()].into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_works_unchanged() {
    scenario("cli", |_| {}).await;
}
