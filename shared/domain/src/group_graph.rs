//! A job too large to draw task by task, drawn by group (see [`group_of`]): which
//! groups depend on which, and the chain of groups that held the job up.
//!
//! The edges come from the spec alone (a task's group and each of its dependencies'
//! groups), so they are known at submission without reading a task. A group's edges to
//! itself (a chain inside one part) are left out. Groups may depend on each other both
//! ways (`a-1 → b-1 → a-2`): the group graph is not always acyclic, and nothing here
//! assumes it is.

use crate::graph::group_of;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A dependency between two groups: some task of `to` depends on some task of `from`.
pub type GroupEdge = (String, String);

/// The group edges of some tasks, given as (task id, its dependencies as the user
/// named them).
pub fn group_edges<'a>(
    tasks: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> BTreeSet<GroupEdge> {
    let mut edges = BTreeSet::new();
    for (id, deps) in tasks {
        let to = group_of(id);
        for d in deps {
            let from = group_of(d);
            if from != to {
                edges.insert((from, to.clone()));
            }
        }
    }
    edges
}

/// When a group's tasks ran: the first start and, where one is still running, `now`
/// as its end, otherwise the last finish. Both absent for a group none of whose tasks
/// has started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupSpan {
    pub first_started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// Each group's depth: the most groups on a chain of edges leading to it (a group
/// with no predecessor is at 0). Edges that close a cycle are not followed.
pub fn group_depths(
    groups: &BTreeSet<String>,
    edges: &BTreeSet<GroupEdge>,
) -> BTreeMap<String, u32> {
    let mut preds: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut succs: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut waiting: HashMap<&str, usize> = groups.iter().map(|g| (g.as_str(), 0)).collect();
    for (from, to) in edges {
        if !(groups.contains(from) && groups.contains(to)) {
            continue;
        }
        preds.entry(to).or_default().push(from);
        succs.entry(from).or_default().push(to);
        *waiting.entry(to).or_default() += 1;
    }
    let mut depth: BTreeMap<String, u32> = BTreeMap::new();
    // Kahn's order; when only groups on cycles are left, the first of them by name goes
    // next, at one past its predecessors placed so far.
    let mut left: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
    let mut ready: Vec<&str> = left.iter().copied().filter(|g| waiting[g] == 0).collect();
    while let Some(g) = ready.pop().or_else(|| left.iter().next().copied()) {
        if !left.remove(g) {
            continue;
        }
        let d = preds
            .get(g)
            .into_iter()
            .flatten()
            .filter_map(|p| depth.get(*p))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(g.to_string(), d);
        for s in succs.get(g).into_iter().flatten() {
            let w = waiting.entry(s).or_default();
            *w = w.saturating_sub(1);
            if *w == 0 && left.contains(s) {
                ready.push(s);
            }
        }
    }
    depth
}

/// The chain of groups that held the job up, first to last. It ends at the group that
/// ended last (or runs now), and goes back each time to the predecessor that ended
/// last: the one its group waited for longest. Before anything has run, or among
/// predecessors none of which has, it follows the deepest (the longest chain of
/// groups), so a job not started yet shows its longest chain. Each group appears once.
pub fn group_critical_path(
    spans: &BTreeMap<String, GroupSpan>,
    edges: &BTreeSet<GroupEdge>,
) -> Vec<String> {
    let groups: BTreeSet<String> = spans.keys().cloned().collect();
    let depth = group_depths(&groups, edges);
    // What ranks a group: when it ended (groups that ended beat those that did not),
    // then how deep it is, then (for a stable answer) its name, first by name winning.
    let rank = |g: &str| {
        let end = spans.get(g).and_then(|s| s.ended_at);
        (
            end.is_some(),
            end.unwrap_or(0),
            depth.get(g).copied().unwrap_or(0),
        )
    };
    let best = |candidates: &mut dyn Iterator<Item = &str>| {
        let mut best: Option<&str> = None;
        for c in candidates {
            if best.is_none_or(|b| rank(c) > rank(b)) {
                best = Some(c);
            }
        }
        best.map(str::to_string)
    };
    let mut preds: HashMap<&str, Vec<&str>> = HashMap::new();
    for (from, to) in edges {
        if groups.contains(from) && groups.contains(to) {
            preds.entry(to).or_default().push(from);
        }
    }
    let Some(mut at) = best(&mut groups.iter().map(String::as_str)) else {
        return Vec::new();
    };
    let mut path = vec![at.clone()];
    let mut seen: BTreeSet<String> = BTreeSet::from([at.clone()]);
    loop {
        let mut candidates = preds
            .get(at.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| !seen.contains(*p));
        let Some(prev) = best(&mut candidates) else {
            break;
        };
        seen.insert(prev.clone());
        path.push(prev.clone());
        at = prev;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn edge(a: &str, b: &str) -> GroupEdge {
        (a.to_string(), b.to_string())
    }

    fn spans(v: &[(&str, Option<i64>)]) -> BTreeMap<String, GroupSpan> {
        v.iter()
            .map(|(g, end)| {
                (
                    g.to_string(),
                    GroupSpan {
                        first_started_at: end.map(|e| e - 1),
                        ended_at: *end,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn edges_join_groups_and_leave_chains_inside_a_group_out() {
        let tasks = [
            ("prep-1", ids(&[])),
            ("prep-2", ids(&["prep-1"])),
            ("train-1", ids(&["prep-1", "prep-2"])),
            ("train-2", ids(&["prep-2", "config"])),
            ("report", ids(&["train-1", "train-2"])),
        ];
        let edges = group_edges(tasks.iter().map(|(id, d)| (*id, d.as_slice())));
        assert_eq!(
            edges,
            BTreeSet::from([
                edge("prep-", "train-"),
                edge("config", "train-"),
                edge("train-", "report"),
            ])
        );
    }

    #[test]
    fn depth_is_the_longest_chain_and_cycles_do_not_loop() {
        let groups: BTreeSet<String> = ["a-", "b-", "c-", "d-"].map(String::from).into();
        let edges = BTreeSet::from([
            edge("a-", "b-"),
            edge("b-", "c-"),
            edge("a-", "c-"),
            edge("c-", "d-"),
            edge("d-", "c-"),
        ]);
        let d = group_depths(&groups, &edges);
        assert_eq!(d["a-"], 0);
        assert_eq!(d["b-"], 1);
        assert_eq!(d.len(), 4, "every group gets a depth: {d:?}");
        assert!(d["c-"] >= 2 || d["d-"] >= 3, "{d:?}");
    }

    #[test]
    fn before_anything_runs_the_path_is_the_longest_chain() {
        let s = spans(&[("l0-", None), ("l1-", None), ("l2-", None), ("side-", None)]);
        let edges = BTreeSet::from([edge("l0-", "l1-"), edge("l1-", "l2-"), edge("l0-", "side-")]);
        assert_eq!(group_critical_path(&s, &edges), ids(&["l0-", "l1-", "l2-"]));
    }

    #[test]
    fn once_groups_have_run_the_path_follows_what_ended_last() {
        // `report` waited on both `fast-` and `slow-`; `slow-` ended later.
        let s = spans(&[
            ("prep-", Some(10)),
            ("fast-", Some(20)),
            ("slow-", Some(90)),
            ("report", Some(100)),
            ("later-", None),
        ]);
        let edges = BTreeSet::from([
            edge("prep-", "fast-"),
            edge("prep-", "slow-"),
            edge("fast-", "report"),
            edge("slow-", "report"),
            edge("report", "later-"),
        ]);
        assert_eq!(
            group_critical_path(&s, &edges),
            ids(&["prep-", "slow-", "report"])
        );
    }

    #[test]
    fn a_cycle_of_groups_ends_the_walk_instead_of_looping() {
        let s = spans(&[("a-", Some(5)), ("b-", Some(6))]);
        let edges = BTreeSet::from([edge("a-", "b-"), edge("b-", "a-")]);
        assert_eq!(group_critical_path(&s, &edges), ids(&["a-", "b-"]));
        assert!(group_critical_path(&BTreeMap::new(), &edges).is_empty());
    }
}
