//! Turning workers into nodes: launch configs (instance type × availability zone × spot
//! or on-demand), their ranking for a pool, bin-packing workers onto instances, and the
//! limits that bound what one tick may ask EC2 for. Pure: prices, marks and limits come
//! in as data, the decision goes out as data.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Spot or on-demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purchase {
    Spot,
    OnDemand,
}

/// One way to get a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub instance_type: String,
    pub zone: String,
    pub purchase: Purchase,
    /// Thousandths of a vCPU, MiB, GPUs the node offers to workers.
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    /// Dollars per hour (on-demand list price, or the current spot price).
    pub price_per_hour: f64,
    /// An on-demand capacity reservation (ODCR) covers this config.
    #[serde(default)]
    pub reserved: bool,
    /// EC2's spot placement score or similar (higher: more capacity), when known.
    #[serde(default)]
    pub capacity_score: Option<f64>,
}

impl LaunchConfig {
    /// `m5.2xlarge:us-east-1a:spot`: the key capacity-limited marks and limits use.
    pub fn key(&self) -> String {
        let p = match self.purchase {
            Purchase::Spot => "spot",
            Purchase::OnDemand => "on-demand",
        };
        format!("{}:{}:{p}", self.instance_type, self.zone)
    }
}

/// A worker's size, as a pool asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerShape {
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
}

impl WorkerShape {
    /// How many workers of this shape fit on one node of `c`.
    pub fn per_node(&self, c: &LaunchConfig) -> u64 {
        [
            c.cpu_milli.checked_div(self.cpu_milli),
            c.memory_mib.checked_div(self.memory_mib),
            u64::from(c.gpus).checked_div(u64::from(self.gpus)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0)
    }

    /// Price per worker-hour on `c`, when at least one worker fits.
    pub fn price_per_worker(&self, c: &LaunchConfig) -> Option<f64> {
        let k = self.per_node(c);
        (k > 0).then(|| c.price_per_hour / k as f64)
    }
}

/// How configs are ordered for a pool; the first that is not capacity-limited and
/// within limits is asked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lowest price per worker (the pool's dominant resource decides how many fit).
    #[default]
    CheapestFirst,
    /// Bigger nodes first (fewer nodes to boot and manage), ties by price.
    PreferLarger,
    /// Configs covered by a capacity reservation first, then cheapest.
    PreferReserved,
    /// Spot configs with the most capacity first (by score), then cheapest.
    SpotCapacityOptimized,
}

/// Configs that can hold at least one worker of `shape`, best first under `strategy`,
/// without those in `limited` (capacity-limited keys).
pub fn rank<'a>(
    configs: &'a [LaunchConfig],
    shape: &WorkerShape,
    strategy: Strategy,
    limited: &BTreeSet<String>,
) -> Vec<&'a LaunchConfig> {
    let mut usable: Vec<&LaunchConfig> = configs
        .iter()
        .filter(|c| shape.per_node(c) > 0 && !limited.contains(&c.key()))
        .collect();
    let price = |c: &LaunchConfig| shape.price_per_worker(c).unwrap_or(f64::INFINITY);
    usable.sort_by(|a, b| {
        let by_price = price(a).total_cmp(&price(b));
        let then = by_price.then_with(|| a.key().cmp(&b.key()));
        match strategy {
            Strategy::CheapestFirst => then,
            Strategy::PreferLarger => shape.per_node(b).cmp(&shape.per_node(a)).then(then),
            Strategy::PreferReserved => b.reserved.cmp(&a.reserved).then(then),
            Strategy::SpotCapacityOptimized => {
                let spot = |c: &LaunchConfig| c.purchase == Purchase::Spot;
                let score = |c: &LaunchConfig| c.capacity_score.unwrap_or(0.0);
                spot(b)
                    .cmp(&spot(a))
                    .then(score(b).total_cmp(&score(a)))
                    .then(then)
            }
        }
    });
    usable
}

/// Nodes of `c` needed for `workers` workers of `shape` (whole nodes).
pub fn nodes_for(workers: u64, shape: &WorkerShape, c: &LaunchConfig) -> u64 {
    let k = shape.per_node(c);
    if k == 0 {
        return 0;
    }
    workers.div_ceil(k)
}

/// Limits on what the fleet may be, globally or for one config.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    pub max_nodes: Option<u64>,
    pub max_dollars_per_hour: Option<f64>,
    pub max_nodes_added_per_tick: Option<u64>,
}

/// The fleet as it stands (globally or for one config), and what this tick added so far.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Fleet {
    pub nodes: u64,
    pub dollars_per_hour: f64,
    pub added_this_tick: u64,
}

/// How many of `want` nodes at `price` each the limits let through, and the limit that
/// bound (`max_nodes 40`, `max_dollars_per_hour 100`, `max_nodes_added_per_tick 10`).
pub fn allowed(want: u64, price: f64, fleet: &Fleet, limits: &Limits) -> (u64, Option<String>) {
    let mut n = want;
    let mut binding = None;
    let mut cap = |room: u64, why: String| {
        if room < n {
            n = room;
            binding = Some(why);
        }
    };
    if let Some(max) = limits.max_nodes {
        cap(max.saturating_sub(fleet.nodes), format!("max_nodes {max}"));
    }
    if let Some(max) = limits.max_nodes_added_per_tick {
        cap(
            max.saturating_sub(fleet.added_this_tick),
            format!("max_nodes_added_per_tick {max}"),
        );
    }
    if let (Some(max), true) = (limits.max_dollars_per_hour, price > 0.0) {
        let room = ((max - fleet.dollars_per_hour).max(0.0) / price).floor() as u64;
        cap(room, format!("max_dollars_per_hour {max}"));
    }
    (n, binding)
}

/// One fleet request the autoscaler will make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRequest {
    pub launch_config: String,
    pub nodes: u64,
    /// Workers of the pool these nodes are for.
    pub workers: u64,
    pub dollars_per_hour: f64,
}

/// What one pool's new workers turn into: fleet requests in rank order, workers left
/// without a node, and the limits that bound on the way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    pub requests: Vec<NodeRequest>,
    pub unplaced_workers: u64,
    pub binding_limits: Vec<String>,
}

/// Plan nodes for `workers` new workers of `shape`: walk the ranked configs (capacity-
/// limited ones already left out), give each as many nodes as the global and per-config
/// limits allow, and go on to the next config for the rest. `global` and the per-config
/// fleets are updated with what the plan adds, so several pools share one tick's limits.
pub fn plan_nodes(
    workers: u64,
    shape: &WorkerShape,
    ranked: &[&LaunchConfig],
    global: &mut Fleet,
    global_limits: &Limits,
    per_config: &mut std::collections::BTreeMap<String, Fleet>,
    config_limits: &std::collections::BTreeMap<String, Limits>,
) -> NodePlan {
    let mut plan = NodePlan::default();
    let mut left = workers;
    for c in ranked {
        if left == 0 {
            break;
        }
        let want = nodes_for(left, shape, c);
        let key = c.key();
        let (n, why) = allowed(want, c.price_per_hour, global, global_limits);
        let mut n = n;
        if let Some(w) = why {
            plan.binding_limits.push(format!("global {w}"));
        }
        let fleet = per_config.entry(key.clone()).or_default();
        if let Some(l) = config_limits.get(&key) {
            let (m, why) = allowed(n, c.price_per_hour, fleet, l);
            if let Some(w) = why {
                plan.binding_limits.push(format!("{key} {w}"));
            }
            n = m;
        }
        if n == 0 {
            continue;
        }
        let placed = (n * shape.per_node(c)).min(left);
        left -= placed;
        let dollars = n as f64 * c.price_per_hour;
        for f in [&mut *global, fleet] {
            f.nodes += n;
            f.added_this_tick += n;
            f.dollars_per_hour += dollars;
        }
        plan.requests.push(NodeRequest {
            launch_config: key,
            nodes: n,
            workers: placed,
            dollars_per_hour: dollars,
        });
    }
    plan.unplaced_workers = left;
    plan
}

/// A node of one (cluster, pool) as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    /// Workers of the pool it holds when full.
    pub holds: u64,
    /// A worker is known to be on it (Kubernetes says which node a pod runs on).
    pub busy: bool,
    pub price_per_hour: f64,
}

/// Workers of a pool that its nodes have no room for: they need new nodes.
pub fn workers_without_room(nodes: &[NodeView], workers: u64) -> u64 {
    workers.saturating_sub(nodes.iter().map(|n| n.holds).sum())
}

/// Nodes a pool can give up: empty ones whose room its `workers` (running, starting and
/// just launched, wherever they sit) do not need, most expensive first. A node with a
/// worker on it is never given up, so no running task is interrupted.
pub fn surplus_nodes(nodes: &[NodeView], workers: u64) -> Vec<String> {
    let mut room: u64 = nodes.iter().map(|n| n.holds).sum();
    let mut empty: Vec<&NodeView> = nodes.iter().filter(|n| !n.busy).collect();
    empty.sort_by(|a, b| {
        b.price_per_hour
            .total_cmp(&a.price_per_hour)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut surplus = Vec::new();
    for n in empty {
        if room - n.holds >= workers {
            room -= n.holds;
            surplus.push(n.id.clone());
        }
    }
    surplus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(t: &str, purchase: Purchase, cpu: u64, mem_gib: u64, price: f64) -> LaunchConfig {
        LaunchConfig {
            instance_type: t.into(),
            zone: "us-east-1a".into(),
            purchase,
            cpu_milli: cpu * 1000,
            memory_mib: mem_gib * 1024,
            gpus: 0,
            price_per_hour: price,
            reserved: false,
            capacity_score: None,
        }
    }

    fn shape(cpu: u64, mem_mib: u64) -> WorkerShape {
        WorkerShape {
            cpu_milli: cpu * 1000,
            memory_mib: mem_mib,
            gpus: 0,
        }
    }

    fn configs() -> Vec<LaunchConfig> {
        vec![
            config("m5.2xlarge", Purchase::OnDemand, 8, 32, 0.384),
            config("m5.2xlarge", Purchase::Spot, 8, 32, 0.15),
            config("r5.2xlarge", Purchase::OnDemand, 8, 64, 0.504),
            config("c5.4xlarge", Purchase::OnDemand, 16, 32, 0.68),
        ]
    }

    #[test]
    fn the_dominant_resource_decides_how_many_workers_a_node_holds() {
        let c = &configs();
        // 2 vCPU, 16 GiB: memory binds on m5 (2 a node), CPU on r5 (4 a node).
        let s = shape(2, 16 * 1024);
        assert_eq!(s.per_node(&c[0]), 2);
        assert_eq!(s.per_node(&c[2]), 4);
        assert_eq!(nodes_for(9, &s, &c[2]), 3);
        assert_eq!(shape(64, 1).per_node(&c[0]), 0);
    }

    #[test]
    fn cheapest_first_ranks_by_price_per_worker_and_skips_limited_configs() {
        let c = configs();
        let s = shape(2, 16 * 1024);
        let keys = |v: Vec<&LaunchConfig>| v.iter().map(|c| c.key()).collect::<Vec<_>>();
        // Per worker: m5 spot 0.075, r5 0.126, m5 on-demand 0.192, c5 0.34.
        assert_eq!(
            keys(rank(&c, &s, Strategy::CheapestFirst, &BTreeSet::new())),
            [
                "m5.2xlarge:us-east-1a:spot",
                "r5.2xlarge:us-east-1a:on-demand",
                "m5.2xlarge:us-east-1a:on-demand",
                "c5.4xlarge:us-east-1a:on-demand"
            ]
        );
        let limited = BTreeSet::from(["m5.2xlarge:us-east-1a:spot".to_string()]);
        assert_eq!(
            keys(rank(&c, &s, Strategy::CheapestFirst, &limited))[0],
            "r5.2xlarge:us-east-1a:on-demand"
        );
    }

    #[test]
    fn strategies_reorder_the_same_configs() {
        let mut c = configs();
        c[3].reserved = true;
        c[1].capacity_score = Some(9.0);
        let s = shape(2, 4096);
        let first = |st| rank(&c, &s, st, &BTreeSet::new())[0].key();
        assert_eq!(
            first(Strategy::PreferLarger),
            "c5.4xlarge:us-east-1a:on-demand"
        );
        assert_eq!(
            first(Strategy::PreferReserved),
            "c5.4xlarge:us-east-1a:on-demand"
        );
        assert_eq!(
            first(Strategy::SpotCapacityOptimized),
            "m5.2xlarge:us-east-1a:spot"
        );
        assert_eq!(first(Strategy::CheapestFirst), "m5.2xlarge:us-east-1a:spot");
    }

    #[test]
    fn limits_cap_a_request_and_name_the_one_that_bound() {
        let none = Limits::default();
        let fleet = Fleet {
            nodes: 35,
            dollars_per_hour: 90.0,
            added_this_tick: 2,
        };
        assert_eq!(allowed(10, 1.0, &fleet, &none), (10, None));
        let l = Limits {
            max_nodes: Some(40),
            ..Limits::default()
        };
        assert_eq!(
            allowed(10, 1.0, &fleet, &l),
            (5, Some("max_nodes 40".into()))
        );
        let l = Limits {
            max_nodes: Some(40),
            max_dollars_per_hour: Some(93.5),
            max_nodes_added_per_tick: Some(6),
        };
        // $3.5/h of room at $1/h: 3 nodes, fewer than the 4 the tick limit leaves.
        assert_eq!(
            allowed(10, 1.0, &fleet, &l),
            (3, Some("max_dollars_per_hour 93.5".into()))
        );
    }

    #[test]
    fn only_empty_nodes_the_pool_does_not_need_are_surplus() {
        let node = |id: &str, holds, busy, price| NodeView {
            id: id.into(),
            holds,
            busy,
            price_per_hour: price,
        };
        let nodes = [
            node("cheap", 4, false, 0.1),
            node("dear", 4, false, 0.5),
            node("used", 4, true, 0.9),
        ];
        // 3 workers fit on one node; the busy one stays, the dearer empty one goes
        // first, and the cheap one too since "used" alone holds the 3.
        assert_eq!(surplus_nodes(&nodes, 3), ["dear", "cheap"]);
        // 6 workers need two nodes: only the dear empty one goes.
        assert_eq!(surplus_nodes(&nodes, 6), ["dear"]);
        assert!(surplus_nodes(&nodes, 12).is_empty());
        // No workers at all: every empty node goes, the busy one never does.
        assert_eq!(surplus_nodes(&nodes, 0), ["dear", "cheap"]);
        assert_eq!(workers_without_room(&nodes, 15), 3);
        assert_eq!(workers_without_room(&nodes, 5), 0);
    }

    #[test]
    fn a_plan_falls_back_to_the_next_config_when_a_limit_binds() {
        use std::collections::BTreeMap;
        let c = configs();
        let s = shape(2, 16 * 1024);
        let ranked = rank(&c, &s, Strategy::CheapestFirst, &BTreeSet::new());
        // m5 spot holds 2 workers a node and may add only 3 nodes this tick; r5 takes the
        // rest at 4 a node.
        let mut per = BTreeMap::new();
        let limits = BTreeMap::from([(
            "m5.2xlarge:us-east-1a:spot".to_string(),
            Limits {
                max_nodes_added_per_tick: Some(3),
                ..Limits::default()
            },
        )]);
        let mut global = Fleet::default();
        let plan = plan_nodes(
            20,
            &s,
            &ranked,
            &mut global,
            &Limits::default(),
            &mut per,
            &limits,
        );
        let got: Vec<(&str, u64, u64)> = plan
            .requests
            .iter()
            .map(|r| (r.launch_config.as_str(), r.nodes, r.workers))
            .collect();
        assert_eq!(
            got,
            [
                ("m5.2xlarge:us-east-1a:spot", 3, 6),
                ("r5.2xlarge:us-east-1a:on-demand", 4, 14)
            ]
        );
        assert_eq!(plan.unplaced_workers, 0);
        assert_eq!(
            plan.binding_limits,
            ["m5.2xlarge:us-east-1a:spot max_nodes_added_per_tick 3"]
        );
        assert_eq!(global.nodes, 7);
        // A global spend limit leaves workers without nodes, and says so.
        let mut global = Fleet::default();
        let spend = Limits {
            max_dollars_per_hour: Some(0.5),
            ..Limits::default()
        };
        let plan = plan_nodes(
            20,
            &s,
            &ranked,
            &mut global,
            &spend,
            &mut BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(plan.requests[0].nodes, 3, "{plan:?}");
        assert!(plan.unplaced_workers > 0, "{plan:?}");
        assert!(
            plan.binding_limits[0].starts_with("global max_dollars_per_hour 0.5"),
            "{plan:?}"
        );
    }
}
