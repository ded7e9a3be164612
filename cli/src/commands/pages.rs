//! Submitting a job too big for one request: open it, send its tasks in pages (in an
//! order where every task's dependencies are in its own page or an earlier one, several
//! pages at once where none waits on another), then commit. Each page is named by its
//! place, so a page sent again (a retry, or the whole command run again with the same
//! idempotency key) is stored once.

use crate::client::{Api, HttpError};
use anyhow::Context;
use batchplane::domain::spec::JobSpec;
use batchplane::domain::TaskSpec;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Tasks per page unless told otherwise: well inside an API request's size and time.
pub const PAGE_TASKS: usize = 5_000;

/// Pages in flight at once.
pub const PAGES_AT_ONCE: usize = 4;

/// Tries of one page before the submission gives up (the job is left open; run the
/// command again with the same idempotency key to finish it).
const PAGE_TRIES: u32 = 6;

/// The tasks in an order where each comes after its dependencies (the spec was checked
/// for cycles already).
fn dependency_order(tasks: &[TaskSpec]) -> Vec<usize> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut waiting: Vec<usize> = tasks.iter().map(|t| t.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    order
}

/// A page: its tasks, and the pages it needs stored first (those holding its tasks'
/// dependencies from outside it).
#[derive(Debug)]
pub struct Page {
    pub id: String,
    pub tasks: Vec<usize>,
    pub after: HashSet<usize>,
}

/// Cut the tasks into pages of at most `size`, in dependency order.
pub fn paginate(tasks: &[TaskSpec], size: usize) -> Vec<Page> {
    let order = dependency_order(tasks);
    let mut page_of: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    let mut pages = Vec::new();
    for (n, chunk) in order.chunks(size.max(1)).enumerate() {
        for &i in chunk {
            page_of.insert(tasks[i].id.as_str(), n);
        }
        let after = chunk
            .iter()
            .flat_map(|&i| &tasks[i].depends_on)
            .filter_map(|d| page_of.get(d.as_str()).copied())
            .filter(|&p| p != n)
            .collect();
        pages.push(Page {
            id: format!("p{n:06}"),
            tasks: chunk.to_vec(),
            after,
        });
    }
    pages
}

/// Open the job, send its pages, commit it; returns the job id.
pub async fn submit_in_pages(
    api: &Api,
    spec: &JobSpec,
    key: Option<&str>,
    page_size: usize,
) -> anyhow::Result<String> {
    let total = spec.tasks.len();
    let open = json!({
        "name": spec.name,
        "team": spec.team,
        "queue": spec.queue,
        "task_events": spec.task_events,
        "task_token": spec.task_token,
        "open": true,
        "expected_tasks": total,
        "tasks": [],
    });
    let resp = api
        .post("/v1/jobs", open.to_string(), key)
        .await
        .with_context(|| format!("opening job {}", spec.name))?;
    let job_id = resp["job_id"]
        .as_str()
        .context("the API answered without a job_id")?
        .to_string();
    let pages = paginate(&spec.tasks, page_size);
    let mut progress = Progress::new(pages.len(), total);
    let mut done: HashSet<usize> = HashSet::new();
    let mut next = 0;
    let mut in_flight = FuturesUnordered::new();
    while done.len() < pages.len() {
        // Start every page whose earlier pages are stored, up to the limit, in order.
        while next < pages.len()
            && in_flight.len() < PAGES_AT_ONCE
            && pages[next].after.iter().all(|p| done.contains(p))
        {
            let page = &pages[next];
            let body = json!({
                "tasks": page.tasks.iter().map(|&i| &spec.tasks[i]).collect::<Vec<_>>()
            })
            .to_string();
            let (n, tasks) = (next, page.tasks.len());
            let path = format!("/v1/jobs/{job_id}/pages/{}", page.id);
            in_flight.push(async move { (n, tasks, send_page(api, &path, body).await) });
            next += 1;
        }
        let Some((n, tasks, result)) = in_flight.next().await else {
            anyhow::bail!(
                "paging stalled: page {} waits on pages never sent",
                pages[next].id
            );
        };
        result.with_context(|| {
            format!(
                "sending page {} ({} of {}) of job {job_id}; pages stored so far: {}. The job stays open (and is closed after half an hour without pages): run the command again with the same --idempotency-key to finish it",
                pages[n].id,
                n + 1,
                pages.len(),
                done.len()
            )
        })?;
        done.insert(n);
        progress.page_done(tasks);
    }
    progress.finish();
    let mut tries = 0;
    loop {
        match api
            .post(&format!("/v1/jobs/{job_id}/commit"), String::new(), None)
            .await
        {
            Ok(_) => return Ok(job_id),
            Err(e) if HttpError::retryable(&e) && tries + 1 < PAGE_TRIES => {
                tries += 1;
                tokio::time::sleep(backoff(tries)).await;
            }
            Err(e) => return Err(e.context(format!("committing job {job_id}"))),
        }
    }
}

/// One page, tried again while the API may take it later (a page is idempotent).
async fn send_page(api: &Api, path: &str, body: String) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match api.put(path, body.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if HttpError::retryable(&e) && tries + 1 < PAGE_TRIES => {
                tries += 1;
                tracing::warn!(error = %e, path, tries, "page not stored; sending it again");
                tokio::time::sleep(backoff(tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn backoff(tries: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(tries.min(6)))
}

/// Pages and tasks sent so far, on stderr: a bar on a terminal, a line every few
/// seconds otherwise.
struct Progress {
    pages: usize,
    tasks: usize,
    pages_done: usize,
    tasks_done: usize,
    started: Instant,
    last_line: Instant,
    tty: bool,
}

impl Progress {
    fn new(pages: usize, tasks: usize) -> Progress {
        Progress {
            pages,
            tasks,
            pages_done: 0,
            tasks_done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let width = 30;
        let filled = self.tasks_done * width / self.tasks.max(1);
        format!(
            "[{}{}] pages {}/{}  tasks {}/{}  {:.0} tasks/s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.pages_done,
            self.pages,
            self.tasks_done,
            self.tasks,
            self.tasks_done as f64 / secs
        )
    }

    fn page_done(&mut self, tasks: usize) {
        self.pages_done += 1;
        self.tasks_done += tasks;
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{}", self.line());
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(err, "{}", self.line());
            self.last_line = Instant::now();
        }
    }

    fn finish(&self) {
        let mut err = std::io::stderr();
        if self.tty {
            let _ = writeln!(err);
        }
        let _ = writeln!(
            err,
            "sent {} tasks in {} pages in {:.1} s; committing",
            self.tasks,
            self.pages,
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, deps: &[&str]) -> TaskSpec {
        serde_json::from_value(json!({"id": id, "command": ["true"], "depends_on": deps}))
            .expect("a task")
    }

    #[test]
    fn pages_follow_dependencies_and_name_the_pages_they_wait_on() {
        // Listed with dependents first: the pages must still put each after its deps.
        let tasks = vec![
            t("d", &["b", "c"]),
            t("c", &["a"]),
            t("b", &["a"]),
            t("a", &[]),
            t("e", &[]),
        ];
        let pages = paginate(&tasks, 2);
        assert_eq!(pages.len(), 3);
        let page_of = |id: &str| {
            pages
                .iter()
                .position(|p| p.tasks.iter().any(|&i| tasks[i].id == id))
                .expect("paged")
        };
        for task in &tasks {
            for d in &task.depends_on {
                assert!(page_of(d) <= page_of(&task.id), "{d} after {}", task.id);
            }
        }
        let d = page_of("d");
        for dep in ["b", "c"] {
            if page_of(dep) != d {
                assert!(pages[d].after.contains(&page_of(dep)));
            }
        }
        assert!(pages.iter().all(|p| !p.after.contains(&pages.len())));
        assert_eq!(pages[0].id, "p000000");
        let all: usize = pages.iter().map(|p| p.tasks.len()).sum();
        assert_eq!(all, tasks.len());
    }
}
