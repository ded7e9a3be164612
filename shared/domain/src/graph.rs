//! A job's graph as its user drew it: each task's dependencies with the internal
//! barriers (`~…`, which join and split edges wider than a task item holds) seen
//! through, and the critical path, the chain of dependencies whose run times add up
//! to the most.

use std::collections::{BTreeMap, HashMap};

/// The group a task is counted in for a job too large to draw task by task: its id up
/// to and with its last separator (`-`, `_` or `.`: `level-3-0042` is in `level-3-`, so
/// a group is also the prefix that finds its tasks), or, for an id without one, the id
/// less its trailing digits (`t0042` is in `t`; an id of digits alone is in `#`). A job
/// names its tasks after their parts, so their groups are its parts.
pub fn group_of(task_id: &str) -> String {
    if let Some(i) = task_id.rfind(['-', '_', '.']) {
        return task_id[..=i].to_string();
    }
    let stem = task_id.trim_end_matches(|c: char| c.is_ascii_digit());
    match stem {
        "" => "#".to_string(),
        s if s == task_id => task_id.to_string(),
        s => s.to_string(),
    }
}

/// Whether a task id is an internal barrier's.
pub fn is_barrier(id: &str) -> bool {
    id.starts_with('~')
}

/// Each user task's dependencies on user tasks, barriers seen through (a barrier's own
/// dependencies stand for it, however deep the tree of barriers). Barriers themselves
/// are left out. A dependency on a task not in `deps_of` is kept as it is.
pub fn user_dependencies(deps_of: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    fn through(
        id: &str,
        deps_of: &BTreeMap<String, Vec<String>>,
        memo: &mut HashMap<String, Vec<String>>,
    ) -> Vec<String> {
        if let Some(known) = memo.get(id) {
            return known.clone();
        }
        let mut out = Vec::new();
        for d in deps_of.get(id).into_iter().flatten() {
            if is_barrier(d) && deps_of.contains_key(d) {
                out.extend(through(d, deps_of, memo));
            } else {
                out.push(d.clone());
            }
        }
        out.sort();
        out.dedup();
        memo.insert(id.to_string(), out.clone());
        out
    }
    let mut memo = HashMap::new();
    deps_of
        .keys()
        .filter(|id| !is_barrier(id))
        .map(|id| (id.clone(), through(id, deps_of, &mut memo)))
        .collect()
}

/// The path through the graph (first task to last) whose tasks' `weight`s sum to the
/// most: what the job's run time cannot be shorter than. Ties go to the smaller id, so
/// the answer is the same every time. Empty for an empty graph.
pub fn critical_path(
    deps: &BTreeMap<String, Vec<String>>,
    weight: &BTreeMap<String, i64>,
) -> Vec<String> {
    // Kahn's order: a task after every dependency of it.
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, ds) in deps {
        let known: Vec<&str> = ds
            .iter()
            .map(String::as_str)
            .filter(|d| deps.contains_key(*d))
            .collect();
        waiting.insert(id, known.len());
        for d in known {
            dependents.entry(d).or_default().push(id);
        }
    }
    let mut ready: Vec<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    // The heaviest path ending at each task (its weight and length: of two as heavy,
    // the longer), and the dependency it came through.
    let mut best: BTreeMap<&str, ((i64, usize), Option<&str>)> = BTreeMap::new();
    let heavier = |a: &((i64, usize), &str), b: &((i64, usize), &str)| {
        a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1))
    };
    while let Some(id) = ready.pop() {
        let own = weight.get(id).copied().unwrap_or(0).max(0);
        let from = deps[id]
            .iter()
            .filter_map(|d| best.get_key_value(d.as_str()).map(|(k, (w, _))| (*w, *k)))
            .max_by(heavier);
        let (w, len) = from.map_or((0, 0), |(w, _)| w);
        best.insert(id, ((own + w, len + 1), from.map(|(_, k)| k)));
        for next in dependents.get(id).into_iter().flatten() {
            let n = waiting.get_mut(next).map(|n| {
                *n -= 1;
                *n
            });
            if n == Some(0) {
                ready.push(next);
            }
        }
    }
    let Some(last) = best.iter().map(|(id, (w, _))| (*w, *id)).max_by(heavier) else {
        return Vec::new();
    };
    let mut at = Some(last.1);
    let mut path = Vec::new();
    while let Some(id) = at {
        path.push(id.to_string());
        at = best.get(id).and_then(|(_, from)| *from);
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(id, ds)| (id.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_task_is_grouped_by_its_id_up_to_the_last_separator() {
        for (id, group) in [
            ("level-3-0042", "level-3-"),
            ("count_7", "count_"),
            ("a.b.c", "a.b."),
            ("t0042", "t"),
            ("0042", "#"),
            ("merge", "merge"),
            ("-x", "-"),
        ] {
            assert_eq!(group_of(id), group, "{id}");
        }
    }

    #[test]
    fn barriers_are_seen_through_however_deep() {
        let deps = graph(&[
            ("a", &[]),
            ("b", &[]),
            ("c", &[]),
            ("~j1", &["a", "b"]),
            ("~j2", &["~j1", "c"]),
            ("sink", &["~j2", "a"]),
            ("x", &["~split"]),
            ("~split", &["c"]),
        ]);
        let users = user_dependencies(&deps);
        assert_eq!(users["sink"], ["a", "b", "c"]);
        assert_eq!(users["x"], ["c"]);
        assert!(!users.contains_key("~j1"));
    }

    #[test]
    fn the_critical_path_is_the_heaviest_chain() {
        // generate → (count-0: 5 | count-1: 9) → merge, and a light side task.
        let deps = graph(&[
            ("generate", &[]),
            ("count-0", &["generate"]),
            ("count-1", &["generate"]),
            ("merge", &["count-0", "count-1"]),
            ("side", &[]),
        ]);
        let weight: BTreeMap<String, i64> = [
            ("generate", 2),
            ("count-0", 5),
            ("count-1", 9),
            ("merge", 1),
            ("side", 11),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            critical_path(&deps, &weight),
            ["generate", "count-1", "merge"]
        );
        // A side task heavier than the whole chain is the path on its own.
        let mut heavy = weight.clone();
        heavy.insert("side".into(), 13);
        assert_eq!(critical_path(&deps, &heavy), ["side"]);
    }

    #[test]
    fn ties_and_unrun_tasks_give_the_same_answer_every_time() {
        let deps = graph(&[("a", &[]), ("b", &[]), ("c", &["a", "b"])]);
        let none = BTreeMap::new();
        assert_eq!(critical_path(&deps, &none), ["a", "c"]);
        assert!(critical_path(&BTreeMap::new(), &none).is_empty());
    }
}
