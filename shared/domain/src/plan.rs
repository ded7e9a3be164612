//! The dependency plan: what the store writes for a validated spec. Every task item
//! carries its own dependency list and its dependents list, so releasing work needs no
//! edge items. To keep every item small however wide the DAG, a task with more than
//! [`MAX_EDGES`] dependencies or dependents is given a tree of internal *barrier* tasks
//! (ids start with `~`, which users cannot write): no-op tasks the fanout completes itself
//! the moment they become runnable. A fan-in of a million is then a two-level tree of
//! 100-wide barriers: every item stays a few KB (DynamoDB bills an update by the
//! item's whole size) and no item is written more than 100 times.

use super::retry::RetryStrategy;
use super::spec::TaskSpec;
use super::state::TaskState;
use std::collections::{BTreeMap, HashMap};

/// The most dependencies or dependents one task item lists.
pub const MAX_EDGES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// A user's task: runs a command on a worker.
    Command,
    /// An internal no-op that joins or splits wide edges; completed by the fanout.
    Barrier,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Command => "command",
            TaskKind::Barrier => "barrier",
        }
    }
    pub fn parse(s: &str) -> TaskKind {
        if s == "barrier" {
            TaskKind::Barrier
        } else {
            TaskKind::Command
        }
    }
}

/// One task item to write.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    pub id: String,
    pub kind: TaskKind,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub tiers: Vec<super::tiers::Tier>,
    pub timeout_seconds: Option<u64>,
    pub deps: Vec<String>,
    pub dependents: Vec<String>,
    pub state: TaskState,
    pub retry: RetryStrategy,
    /// The image and role the task runs in (`None`: the deployment's worker image).
    pub container: Option<super::containers::Container>,
}

impl PlannedTask {
    fn from_spec(t: &TaskSpec) -> Self {
        PlannedTask {
            id: t.id.clone(),
            kind: TaskKind::Command,
            command: t.command.clone(),
            env: t.env.clone(),
            cpu_milli: t.cpu_milli(),
            memory_mib: t.memory_mib(),
            tiers: t.tiers.clone(),
            timeout_seconds: t.timeout_seconds,
            retry: t.retry_strategy.clone().unwrap_or_default(),
            deps: t.depends_on.clone(),
            dependents: Vec::new(),
            state: TaskState::Pending,
            container: t.container(),
        }
    }

    fn barrier(id: String) -> Self {
        PlannedTask {
            id,
            kind: TaskKind::Barrier,
            command: Vec::new(),
            env: BTreeMap::new(),
            cpu_milli: 0,
            memory_mib: 0,
            tiers: Vec::new(),
            timeout_seconds: None,
            deps: Vec::new(),
            dependents: Vec::new(),
            state: TaskState::Pending,
            retry: RetryStrategy::default(),
            container: None,
        }
    }
}

/// The plan for a new job: one item per task (plus barriers), roots RUNNABLE.
pub fn plan_job(tasks: &[TaskSpec]) -> Vec<PlannedTask> {
    let (plan, _) = plan_addition(tasks);
    plan
}

/// An edge from a task already stored to a new task: the store appends `to` to
/// `from`'s dependents (or releases it at once if `from` has already finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEdge {
    pub from: String,
    pub to: String,
}

/// The plan for tasks added to a job, and the edges that start at tasks already stored.
pub fn plan_addition(tasks: &[TaskSpec]) -> (Vec<PlannedTask>, Vec<ExistingEdge>) {
    let mut plan: Vec<PlannedTask> = tasks.iter().map(PlannedTask::from_spec).collect();
    let mut index: HashMap<String, usize> = plan
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();

    // Forward edges among the new tasks.
    for i in 0..plan.len() {
        for dep in plan[i].deps.clone() {
            if let Some(&d) = index.get(&dep) {
                let id = plan[i].id.clone();
                plan[d].dependents.push(id);
            }
        }
    }

    // Wide fan-in: replace a long dependency list by a tree of join barriers.
    let mut i = 0;
    while i < plan.len() {
        if plan[i].deps.len() > MAX_EDGES {
            let target = plan[i].id.clone();
            let deps = std::mem::take(&mut plan[i].deps);
            let mut joins = Vec::new();
            for chunk in deps.chunks(MAX_EDGES) {
                let bid = format!("~in.{target}.{}", plan.len());
                let mut b = PlannedTask::barrier(bid.clone());
                b.deps = chunk.to_vec();
                b.dependents = vec![target.clone()];
                for dep in chunk {
                    if let Some(&d) = index.get(dep) {
                        replace(&mut plan[d].dependents, &target, &bid);
                    }
                }
                index.insert(bid.clone(), plan.len());
                plan.push(b);
                joins.push(bid);
            }
            plan[i].deps = joins;
            // Re-examine this task: a join list longer than MAX_EDGES splits again.
            continue;
        }
        i += 1;
    }

    // Edges from stored tasks: one per (existing dep, new task), after the joins above.
    let mut existing_edges = Vec::new();
    for t in &plan {
        for dep in &t.deps {
            if !index.contains_key(dep) {
                existing_edges.push(ExistingEdge {
                    from: dep.clone(),
                    to: t.id.clone(),
                });
            }
        }
    }

    // Wide fan-out: replace a long dependents list by a tree of split barriers.
    let mut i = 0;
    while i < plan.len() {
        if plan[i].dependents.len() > MAX_EDGES {
            let source = plan[i].id.clone();
            let dependents = std::mem::take(&mut plan[i].dependents);
            let mut splits = Vec::new();
            for chunk in dependents.chunks(MAX_EDGES) {
                let bid = format!("~out.{source}.{}", plan.len());
                let mut b = PlannedTask::barrier(bid.clone());
                b.deps = vec![source.clone()];
                b.dependents = chunk.to_vec();
                for dependent in chunk {
                    if let Some(&d) = index.get(dependent) {
                        replace(&mut plan[d].deps, &source, &bid);
                    }
                }
                index.insert(bid.clone(), plan.len());
                plan.push(b);
                splits.push(bid);
            }
            plan[i].dependents = splits;
            continue;
        }
        i += 1;
    }

    for t in &mut plan {
        t.state = if t.deps.is_empty() {
            TaskState::Runnable
        } else {
            TaskState::Pending
        };
    }
    (plan, existing_edges)
}

fn replace(list: &mut [String], from: &str, to: &str) {
    if let Some(slot) = list.iter_mut().find(|s| s.as_str() == from) {
        *slot = to.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, deps: &[String]) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            command: vec!["true".into()],
            env: Default::default(),
            cpu: Some(1.0),
            memory_mib: Some(16),
            tiers: Vec::new(),
            timeout_seconds: None,
            depends_on: deps.to_vec(),
            retry_strategy: None,
            image: None,
            job_role_arn: None,
        }
    }

    fn by_id(plan: &[PlannedTask]) -> HashMap<&str, &PlannedTask> {
        plan.iter().map(|t| (t.id.as_str(), t)).collect()
    }

    /// Every edge is listed on both ends, and no item lists more than MAX_EDGES.
    fn assert_consistent(plan: &[PlannedTask]) {
        let m = by_id(plan);
        for t in plan {
            assert!(
                t.deps.len() <= MAX_EDGES,
                "{} has {} deps",
                t.id,
                t.deps.len()
            );
            assert!(
                t.dependents.len() <= MAX_EDGES,
                "{} has {} dependents",
                t.id,
                t.dependents.len()
            );
            for d in &t.deps {
                assert!(
                    m[d.as_str()].dependents.contains(&t.id),
                    "{d} -> {} missing",
                    t.id
                );
            }
            for d in &t.dependents {
                assert!(
                    m[d.as_str()].deps.contains(&t.id),
                    "{} <- {d} missing",
                    t.id
                );
            }
        }
    }

    /// The user tasks each user task transitively waits on, looking through barriers.
    fn user_deps(plan: &[PlannedTask], id: &str) -> Vec<String> {
        let m = by_id(plan);
        let mut out = Vec::new();
        let mut stack: Vec<&str> = m[id].deps.iter().map(|s| s.as_str()).collect();
        while let Some(d) = stack.pop() {
            if m[d].kind == TaskKind::Barrier {
                stack.extend(m[d].deps.iter().map(|s| s.as_str()));
            } else {
                out.push(d.to_string());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn diamond_has_forward_edges_and_runnable_root() {
        let a = "a".to_string();
        let plan = plan_job(&[
            task("a", &[]),
            task("b", std::slice::from_ref(&a)),
            task("c", std::slice::from_ref(&a)),
            task("d", &["b".into(), "c".into()]),
        ]);
        assert_eq!(plan.len(), 4);
        let m = by_id(&plan);
        assert_eq!(m["a"].state, TaskState::Runnable);
        assert_eq!(m["d"].state, TaskState::Pending);
        assert_eq!(m["a"].dependents, vec!["b", "c"]);
        assert_consistent(&plan);
    }

    #[test]
    fn wide_fan_in_goes_through_join_barriers() {
        let n = 250;
        let mut tasks: Vec<TaskSpec> = (0..n).map(|i| task(&format!("t{i}"), &[])).collect();
        let all: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        tasks.push(task("sink", &all));
        let plan = plan_job(&tasks);
        assert_consistent(&plan);
        let barriers = plan.iter().filter(|t| t.kind == TaskKind::Barrier).count();
        assert_eq!(barriers, 3);
        let mut want = all.clone();
        want.sort();
        assert_eq!(user_deps(&plan, "sink"), want);
    }

    #[test]
    fn million_wide_fan_in_stays_bounded() {
        let n = 1_000_001;
        let mut tasks: Vec<TaskSpec> = (0..n).map(|i| task(&format!("t{i}"), &[])).collect();
        let all: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        tasks.push(task("sink", &all));
        let plan = plan_job(&tasks);
        let m = by_id(&plan);
        assert!(m["sink"].deps.len() <= MAX_EDGES);
        assert!(plan.iter().all(|t| t.deps.len() <= MAX_EDGES));
    }

    #[test]
    fn wide_fan_out_goes_through_split_barriers() {
        let root = "root".to_string();
        let mut tasks = vec![task("root", &[])];
        tasks.extend((0..201).map(|i| task(&format!("c{i}"), std::slice::from_ref(&root))));
        let plan = plan_job(&tasks);
        assert_consistent(&plan);
        let m = by_id(&plan);
        assert_eq!(m["root"].dependents.len(), 3);
        assert_eq!(user_deps(&plan, "c200"), vec!["root"]);
        assert_eq!(m["c5"].state, TaskState::Pending);
        assert!(m["root"]
            .dependents
            .iter()
            .all(|d| d.starts_with("~out.root.")));
    }

    #[test]
    fn additions_report_edges_from_stored_tasks() {
        let (plan, edges) = plan_addition(&[
            task("n1", &["old".into()]),
            task("n2", &["n1".into(), "old".into()]),
        ]);
        assert_eq!(plan.len(), 2);
        assert_eq!(
            edges,
            vec![
                ExistingEdge {
                    from: "old".into(),
                    to: "n1".into()
                },
                ExistingEdge {
                    from: "old".into(),
                    to: "n2".into()
                },
            ]
        );
        assert_eq!(by_id(&plan)["n1"].dependents, vec!["n2"]);
    }
}
