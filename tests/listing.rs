//! Listing a queue's jobs from DynamoDB Local's indexes: every ListJobs question answers
//! what AWS Batch documents, and looks at no more of the index than it returns,
//! however long the queue's history.

use batchplane::domain::batch::ArrayJob;
use batchplane::domain::listing::aws_status;
use batchplane::domain::{JobRecord, JobState};
use batchplane::store::{JobQuery, ListPosition, Store};
use batchplane_testing::{Must, TestEmulators};
use futures::{stream, TryStreamExt};

/// Which jobs a question should return.
type Wanted = Box<dyn Fn(&JobRecord) -> bool>;

const DEFINITION: &str = "arn:aws:batch:us-east-1:123456789012:job-definition/render";

/// A finished job of the long history: one of four names, two definitions' revisions
/// and two shares, a millisecond apart.
fn old_job(i: usize, at: i64) -> JobRecord {
    let array: ArrayJob = serde_json::from_value(serde_json::json!({
        "template": {"command": ["true"], "cpu_milli": 1000, "memory_mib": 64},
        "window": 1,
        "job_definition": format!("{DEFINITION}{}:{}", if i.is_multiple_of(2) { "" } else { "-x" }, 1 + i % 3),
        "share_identifier": if i.is_multiple_of(2) { "blue" } else { "green" },
    }))
    .must("an array template");
    JobRecord {
        state: if i.is_multiple_of(5) {
            JobState::Failed
        } else {
            JobState::Succeeded
        },
        created_at: at,
        started_at: Some(at),
        finished_at: Some(at + 1),
        total_tasks: 1,
        array: Some(array),
        ..JobRecord::new(
            &format!("old-{i}"),
            ["nightly", "Nightly-big", "adhoc", "other"][i % 4],
            if i.is_multiple_of(3) { "red" } else { "ml" },
            "shared",
        )
    }
}

/// A live job, newer than the whole history.
fn live_job(id: &str, name: &str, team: &str, at: i64, started: bool) -> JobRecord {
    JobRecord {
        state: JobState::Pending,
        created_at: at,
        started_at: started.then_some(at),
        total_tasks: 1,
        ..JobRecord::new(id, name, team, "shared")
    }
}

async fn list_all(
    store: &Store,
    query: &JobQuery,
    teams: Option<&[String]>,
    page: usize,
) -> (Vec<JobRecord>, usize) {
    let mut out = Vec::new();
    let mut examined = 0;
    let mut start: Option<ListPosition> = None;
    for _ in 0..10_000 {
        let p = store
            .list_jobs("shared", query, teams, page, start.as_ref())
            .await
            .must("a listing");
        examined += p.examined;
        out.extend(p.jobs);
        match p.next {
            Some(n) => start = Some(n),
            None => return (out, examined),
        }
    }
    panic!("{query:?} did not end");
}

#[tokio::test]
async fn each_question_reads_only_its_own_index_however_long_the_history() {
    let emu = TestEmulators::get();
    let store = batchplane_testing::test_store(&emu, "listing").await;
    let base = 1_700_000_000_000i64;
    let history: Vec<JobRecord> = (0..1200).map(|i| old_job(i, base + i as i64)).collect();
    stream::iter(history.iter().map(Ok::<_, batchplane::store::StoreError>))
        .try_for_each_concurrent(16, |j| store.put_job(j))
        .await
        .must("writing the history");
    let live = [
        live_job("run-1", "nightly", "ml", base + 5000, true),
        live_job("run-2", "adhoc", "red", base + 5001, true),
        live_job("wait-1", "nightly", "ml", base + 5002, false),
        live_job("wait-0", "queued", "ml", base + 4999, false),
    ];
    for j in &live {
        store.put_job(j).await.must("a live job");
    }

    // Running jobs: the two, newest first, and nothing of the history looked at.
    let (running, examined) =
        list_all(&store, &JobQuery::Status("RUNNING".into()), None, 100).await;
    let ids: Vec<&str> = running.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["run-2", "run-1"]);
    assert_eq!(examined, 2, "only the running jobs' entries were read");

    // The front of the queue: RUNNABLE jobs, oldest first.
    let (front, _) = list_all(&store, &JobQuery::Front, None, 100).await;
    assert_eq!(
        front.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        ["wait-0", "wait-1"]
    );

    // Each question answers what a walk over every job would, in its index's order.
    let every: Vec<JobRecord> = history.iter().chain(&live).cloned().collect();
    let cases: Vec<(JobQuery, Wanted)> = vec![
        (
            JobQuery::Status("FAILED".into()),
            Box::new(|j| aws_status(j) == "FAILED"),
        ),
        (
            JobQuery::Name {
                value: "nightly".into(),
                prefix: false,
            },
            Box::new(|j| j.name.eq_ignore_ascii_case("nightly")),
        ),
        (
            JobQuery::Name {
                value: "night".into(),
                prefix: true,
            },
            Box::new(|j| j.name.to_lowercase().starts_with("night")),
        ),
        (
            JobQuery::Definition {
                name: "render".into(),
                prefix: false,
            },
            Box::new(|j| definition(j).is_some_and(|d| d.starts_with(&format!("{DEFINITION}:")))),
        ),
        (
            JobQuery::Definition {
                name: "rend".into(),
                prefix: true,
            },
            Box::new(|j| definition(j).is_some()),
        ),
        (
            JobQuery::DefinitionArn(format!("{DEFINITION}:2")),
            Box::new(|j| definition(j) == Some(format!("{DEFINITION}:2"))),
        ),
        (
            JobQuery::Share {
                share: "green".into(),
                status: None,
            },
            Box::new(|j| share(j) == Some("green")),
        ),
        (
            JobQuery::Share {
                share: "blue".into(),
                status: Some("FAILED".into()),
            },
            Box::new(|j| share(j) == Some("blue") && aws_status(j) == "FAILED"),
        ),
        (
            JobQuery::Created {
                at: base + 1100,
                after: true,
            },
            Box::new(move |j| j.created_at > base + 1100),
        ),
        (
            JobQuery::Created {
                at: base + 100,
                after: false,
            },
            Box::new(move |j| j.created_at < base + 100),
        ),
    ];
    for (query, wanted) in &cases {
        let (got, examined) = list_all(&store, query, None, 100).await;
        let mut expected: Vec<&JobRecord> = every.iter().filter(|j| wanted(j)).collect();
        if query.sorted_by_time() {
            expected.sort_by_key(|j| std::cmp::Reverse(j.created_at));
        } else {
            expected.sort_by_key(|j| (sort_name(query, j), std::cmp::Reverse(j.created_at)));
        }
        let got_ids: Vec<&str> = got.iter().map(|j| j.job_id.as_str()).collect();
        let expected_ids: Vec<&str> = expected.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(got_ids, expected_ids, "{query:?}");
        // The revision is filtered within its definition's entries, a share within its
        // status's; every other question reads exactly what it returns.
        let bound = match query {
            JobQuery::Share {
                status: Some(st), ..
            } => every.iter().filter(|j| aws_status(j) == st).count(),
            JobQuery::DefinitionArn(_) => every
                .iter()
                .filter(|j| definition(j).is_some_and(|d| d.starts_with(&format!("{DEFINITION}:"))))
                .count(),
            _ => expected.len(),
        };
        assert!(
            examined <= bound,
            "{query:?} looked at {examined} entries for {} jobs",
            expected.len()
        );
    }

    // A caller who sees only team red: red's jobs, paged two at a time, each once.
    let red = vec!["red".to_string()];
    let (got, _) = list_all(&store, &JobQuery::Status("RUNNING".into()), Some(&red), 2).await;
    assert_eq!(
        got.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        ["run-2"]
    );
    let (got, _) = list_all(
        &store,
        &JobQuery::Name {
            value: "adhoc".into(),
            prefix: false,
        },
        Some(&red),
        7,
    )
    .await;
    let expected = every
        .iter()
        .filter(|j| j.team == "red" && j.name == "adhoc")
        .count();
    assert_eq!(got.len(), expected);
    assert!(got.iter().all(|j| j.team == "red" && j.name == "adhoc"));
    let (nothing, _) = list_all(&store, &JobQuery::All, Some(&[]), 50).await;
    assert!(nothing.is_empty(), "a caller of no team sees nothing");
    store.delete_table().await.must("deleting the table");
}

#[tokio::test]
async fn a_job_is_relisted_as_its_state_moves_and_a_stale_record_cannot_move_it_back() {
    let emu = TestEmulators::get();
    let store = batchplane_testing::test_store(&emu, "relist").await;
    let job = live_job("j-1", "n", "ml", 1_700_000_000_000, false);
    store.put_job(&job).await.must("the job");
    let listed = |status: &'static str| {
        let store = store.clone();
        async move {
            store
                .list_jobs("shared", &JobQuery::Status(status.into()), None, 10, None)
                .await
                .must("a listing")
                .jobs
                .into_iter()
                .map(|j| j.job_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("RUNNABLE").await, ["j-1"]);
    // Its first task starts: the job item moves, and the fanout re-lists it.
    store
        .mark_job_started("j-1", 1_700_000_000_500)
        .await
        .must("marking it started");
    assert!(
        listed("RUNNABLE").await.is_empty(),
        "read back RUNNING, it is not shown as RUNNABLE while its entry lags"
    );
    let started = store.get_job("j-1").await.must("read").must("the job");
    assert!(store.relist_job(&started).await.must("relisting"));
    assert_eq!(listed("RUNNING").await, ["j-1"]);
    // A record of the job as it was before (a redelivered one) cannot list it back.
    assert!(!store.relist_job(&job).await.must("a stale relisting"));
    assert_eq!(listed("RUNNING").await, ["j-1"]);
    assert!(listed("RUNNABLE").await.is_empty());
    store.delete_table().await.must("deleting the table");
}

fn definition(j: &JobRecord) -> Option<String> {
    j.array.as_ref()?.job_definition.clone()
}

fn share(j: &JobRecord) -> Option<&str> {
    j.array.as_ref()?.share_identifier.as_deref()
}

fn sort_name(query: &JobQuery, j: &JobRecord) -> String {
    match query {
        JobQuery::Name { .. } => j.name.to_lowercase(),
        _ => definition(j)
            .as_deref()
            .and_then(batchplane::domain::listing::definition_name)
            .unwrap_or_default()
            .to_string(),
    }
}
