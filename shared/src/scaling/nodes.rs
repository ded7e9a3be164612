//! Nodes for the pools: launch what the workers need from ranked launch configs, cordon
//! and retire empty nodes.
//!
//! One pass: list the deployment's nodes, price the launch configs (spot prices asked
//! once), then for each (cluster, pool) launch nodes for workers without room and note
//! the nodes it could give up; last, surplus nodes idle long enough are cordoned, and
//! cordoned nodes nothing runs on are terminated, at most so many a tick.

use super::fleet::{
    launch_nodes, with_spot_prices, Ec2Api, LaunchContext, LaunchNodesError, Node, SpotPrice,
    TAG_CLUSTER, TAG_POOL, TAG_TEAM,
};
use super::launcher::{LaunchedWorker, WorkerBackend};
use crate::domain::launch::{
    rank, surplus_nodes, workers_without_room, Fleet, LaunchConfig, NodeView, Purchase, WorkerShape,
};
use crate::domain::prices::PriceTable;
use crate::domain::tiers::WorkerPool;
use crate::store::placement::ClusterRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{decision::*, pools::*, settings::*, tick::*};

/// What a node pass reads once and every (cluster, pool) shares.
struct NodePass<'a, E> {
    ec2: &'a E,
    ns: &'a NodeSettings,
    settings: &'a Settings,
    compute: &'a BTreeMap<String, QueueCompute>,
    before: &'a Carried,
    now: i64,
    table: &'static PriceTable,
    /// The settings' launch configs, for queues without compute environments.
    default_configs: Vec<LaunchConfig>,
    prices: Vec<SpotPrice>,
    /// The fleet as it stands, in all and per launch config, grown by each launch.
    global: Fleet,
    per_config: BTreeMap<String, Fleet>,
}

impl<E: Ec2Api> NodePass<'_, E> {
    /// A launch config's price per hour (spot prices applied), 0 when unknown.
    fn price_of(&self, key: &str) -> f64 {
        self.default_configs
            .iter()
            .chain(self.compute.values().flat_map(|c| c.configs.iter()))
            .find(|c| c.key() == key)
            .map_or(0.0, |c| c.price_per_hour)
    }

    /// The nodes as a fleet, in all and per launch config, with what they cost.
    fn count_fleet(&mut self, nodes: &[Node]) {
        for n in nodes {
            let key = n.launch_config();
            let list_price = self.table.get(&n.instance_type).map_or(0.0, |i| {
                if n.purchase == Purchase::Spot {
                    0.0
                } else {
                    i.on_demand_per_hour
                }
            });
            let price = self.price_of(&key).max(list_price);
            for f in [&mut self.global, self.per_config.entry(key).or_default()] {
                f.nodes += 1;
                f.dollars_per_hour += price;
            }
        }
    }
}

/// One (cluster, pool) of the pass: its workers, its nodes and how they look to the
/// launch rules.
struct Group<'a> {
    cluster: String,
    pool: String,
    shape: WorkerShape,
    configs: Vec<LaunchConfig>,
    strategy: crate::domain::launch::Strategy,
    workers: Vec<&'a LaunchedWorker>,
    nodes: Vec<&'a Node>,
    /// The group's nodes that are not cordoned, as the launch rules see them.
    views: Vec<NodeView>,
}

/// Whether one of `workers` runs on node `n` (Kubernetes says which node a pod is on).
fn runs_on(workers: &[&LaunchedWorker], n: &Node) -> bool {
    workers.iter().any(|w| {
        w.node
            .as_deref()
            .is_some_and(|x| x == n.name || x == n.instance_id)
    })
}

/// The settings' launch configs: every instance type they name (families expanded), in
/// every zone, for every purchase option.
fn default_launch_configs(ns: &NodeSettings, table: &PriceTable) -> Vec<LaunchConfig> {
    let mut configs = Vec::new();
    for t in &ns.instance_types {
        for i in table.expand(t) {
            for z in &ns.zones {
                for p in &ns.purchase {
                    if let Some(c) = table.launch_config(&i.name, z, *p) {
                        configs.push(c);
                    }
                }
            }
        }
    }
    configs
}

impl<B: WorkerBackend, E: Ec2Api> Autoscaler<'_, B, E> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scale_nodes(
        &self,
        ec2: &E,
        ns: &NodeSettings,
        settings: &Settings,
        clusters: &[ClusterRecord],
        workers: &[LaunchedWorker],
        compute: &BTreeMap<String, QueueCompute>,
        before: &Carried,
        decision: &mut Decision,
        now: i64,
    ) -> Result<NodeDecision, AutoscaleError> {
        let mut nd = NodeDecision::default();
        let nodes = match ec2.nodes(self.store.table()).await {
            Ok(n) => n,
            Err(e) => {
                decision.errors.push(format!("listing nodes: {e}"));
                decision.carried.idle_since = before.idle_since.clone();
                decision.carried.cordoned = before.cordoned.clone();
                return Ok(nd);
            }
        };
        let table = PriceTable::shipped();
        let mut pass = NodePass {
            ec2,
            ns,
            settings,
            compute,
            before,
            now,
            table,
            default_configs: default_launch_configs(ns, table),
            prices: Vec::new(),
            global: Fleet::default(),
            per_config: BTreeMap::new(),
        };
        pass.prices = spot_prices(&pass, decision).await;
        with_spot_prices(&mut pass.default_configs, &pass.prices);
        pass.count_fleet(&nodes);
        nd.nodes = pass.global.nodes;
        nd.dollars_per_hour = pass.global.dollars_per_hour;

        // Per (cluster, pool): nodes it needs and nodes it can give up.
        let mut groups: BTreeSet<(String, String)> = workers
            .iter()
            .map(|w| (w.cluster.clone(), w.pool.clone()))
            .collect();
        groups.extend(
            nodes
                .iter()
                .map(|n| (n.tag(TAG_CLUSTER).to_string(), n.tag(TAG_POOL).to_string())),
        );
        let mut surplus: Vec<(&Node, String)> = Vec::new();
        for (cluster, pool) in groups {
            let group = group(&pass, &nodes, workers, cluster, pool);
            let count = group.workers.len() as u64;
            let short = workers_without_room(&group.views, count);
            if short > 0 {
                self.launch_for(&mut pass, &group, short, &mut nd, decision)
                    .await?;
            }
            for id in surplus_nodes(&group.views, count) {
                if let Some(n) = group.nodes.iter().find(|n| n.instance_id == id) {
                    surplus.push((n, group.cluster.clone()));
                }
            }
            // Cordoned nodes go once nothing runs on them.
            for n in group
                .nodes
                .iter()
                .filter(|n| before.cordoned.contains_key(&n.instance_id))
            {
                if runs_on(&group.workers, n) {
                    decision
                        .carried
                        .cordoned
                        .insert(n.instance_id.clone(), before.cordoned[&n.instance_id]);
                } else {
                    nd.terminated.push(n.instance_id.clone());
                }
            }
        }
        self.cordon_idle(&pass, surplus, clusters, &mut nd, decision)
            .await;
        terminate(&pass, &mut nd, decision).await;
        Ok(nd)
    }

    /// Launch nodes for a group's `short` workers without room, from its ranked launch
    /// configs under the limits; what was launched, marked and bound goes into `nd`.
    async fn launch_for(
        &self,
        pass: &mut NodePass<'_, E>,
        group: &Group<'_>,
        short: u64,
        nd: &mut NodeDecision,
        decision: &mut Decision,
    ) -> Result<(), AutoscaleError> {
        let (cluster, pool) = (&group.cluster, &group.pool);
        let Some(template) = pass.ns.launch_templates.get(cluster) else {
            decision.errors.push(format!(
                "cluster {cluster}: {short} workers of {pool} need nodes, but nodes.launch_templates names no template for it"
            ));
            return Ok(());
        };
        let team = group
            .workers
            .first()
            .map_or_else(|| pass.settings.default_team.clone(), |w| w.team.clone());
        let limited = self
            .store
            .capacity_marks(pass.now)
            .await?
            .into_iter()
            .map(|m| m.launch_config)
            .collect();
        let ranked: Vec<LaunchConfig> =
            rank(&group.configs, &group.shape, group.strategy, &limited)
                .into_iter()
                .cloned()
                .collect();
        let mut ctx = LaunchContext {
            store: self.store,
            ec2: pass.ec2,
            launch_template: template,
            ranked,
            global: pass.global,
            global_limits: pass.ns.limits,
            per_config: pass.per_config.clone(),
            config_limits: pass.ns.config_limits.clone(),
            mark_for: Duration::from_secs(pass.ns.capacity_mark_seconds),
            tags: BTreeMap::from([
                (TAG_CLUSTER.to_string(), cluster.clone()),
                (TAG_POOL.to_string(), pool.clone()),
                (TAG_TEAM.to_string(), team),
            ]),
        };
        match launch_nodes(&mut ctx, &group.shape, short).await {
            Ok(done) => {
                for (key, ids) in done.fleets {
                    nd.fleets.push(FleetDecision {
                        cluster: cluster.clone(),
                        pool: pool.clone(),
                        launch_config: key,
                        instance_ids: ids,
                    });
                }
                nd.marked.extend(done.marked);
                for l in done.binding_limits {
                    if !nd.binding_limits.contains(&l) {
                        nd.binding_limits.push(l);
                    }
                }
                nd.unplaced_workers += done.unplaced_workers;
            }
            Err(LaunchNodesError::Store(e)) => return Err(e.into()),
            Err(LaunchNodesError::Ec2(e)) => decision
                .errors
                .push(format!("nodes for {pool} in {cluster}: {e}")),
        }
        pass.global = ctx.global;
        pass.per_config = ctx.per_config;
        Ok(())
    }

    /// Unneeded nodes: idle for a while, then cordoned; terminated on a later tick.
    async fn cordon_idle(
        &self,
        pass: &NodePass<'_, E>,
        surplus: Vec<(&Node, String)>,
        clusters: &[ClusterRecord],
        nd: &mut NodeDecision,
        decision: &mut Decision,
    ) {
        let (now, before) = (pass.now, pass.before);
        let idle_for = pass.ns.idle_node_seconds as i64 * 1000;
        for (n, cluster) in surplus {
            let since = before
                .idle_since
                .get(&n.instance_id)
                .copied()
                .unwrap_or(now);
            if now - since < idle_for || now - n.launched_at < idle_for {
                decision
                    .carried
                    .idle_since
                    .insert(n.instance_id.clone(), since);
                continue;
            }
            let Some(c) = clusters.iter().find(|c| c.name == cluster) else {
                // The cluster is gone: nothing can run there; the node goes now.
                nd.terminated.push(n.instance_id.clone());
                continue;
            };
            match self.backend.cordon(c, &n.name).await {
                Ok(()) => {
                    nd.cordoned.push(n.instance_id.clone());
                    decision.carried.cordoned.insert(n.instance_id.clone(), now);
                }
                Err(e) => {
                    decision
                        .errors
                        .push(format!("cordoning node {} in {cluster}: {e}", n.name));
                    decision
                        .carried
                        .idle_since
                        .insert(n.instance_id.clone(), since);
                }
            }
        }
    }
}

/// Spot prices, asked once for every spot type in play; list prices when EC2 does not
/// answer.
async fn spot_prices<E: Ec2Api>(pass: &NodePass<'_, E>, decision: &mut Decision) -> Vec<SpotPrice> {
    let spot_types: BTreeSet<String> = pass
        .default_configs
        .iter()
        .chain(pass.compute.values().flat_map(|c| c.configs.iter()))
        .filter(|c| c.purchase == Purchase::Spot)
        .map(|c| c.instance_type.clone())
        .collect();
    if spot_types.is_empty() {
        return Vec::new();
    }
    match pass
        .ec2
        .spot_prices(&spot_types.into_iter().collect::<Vec<_>>())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            decision
                .errors
                .push(format!("spot prices (list prices used): {e}"));
            Vec::new()
        }
    }
}

/// A (cluster, pool)'s workers and nodes, its worker shape and launch configs (its
/// queue's compute environments', else the settings'), and its live nodes as views.
fn group<'a, E: Ec2Api>(
    pass: &NodePass<'_, E>,
    nodes: &'a [Node],
    workers: &'a [LaunchedWorker],
    cluster: String,
    pool_name: String,
) -> Group<'a> {
    let pool = WorkerPool::parse(&pool_name).unwrap_or_else(|| {
        WorkerPool::new(pool_name.clone(), pass.settings.default_team.clone(), None)
    });
    let own = pass.settings.pools.iter().find(|p| p.pool == pool_name);
    let worker = pool_shape(&pool, pass.settings, own).worker;
    let shape = WorkerShape {
        cpu_milli: u64::from(worker.cpu_milli),
        memory_mib: worker.memory_mib,
        gpus: worker.gpu,
    };
    let qc = pass
        .compute
        .get(&pool.queue)
        .filter(|c| !c.configs.is_empty());
    let mut configs = qc.map_or_else(|| pass.default_configs.clone(), |c| c.configs.clone());
    with_spot_prices(&mut configs, &pass.prices);
    let strategy = qc.and_then(|c| c.strategy).unwrap_or(pass.ns.strategy);
    let mine: Vec<&LaunchedWorker> = workers
        .iter()
        .filter(|w| w.cluster == cluster && w.pool == pool_name)
        .collect();
    let theirs: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.tag(TAG_CLUSTER) == cluster && n.tag(TAG_POOL) == pool_name)
        .collect();
    let views = theirs
        .iter()
        .filter(|n| !pass.before.cordoned.contains_key(&n.instance_id))
        .map(|n| {
            let holds = configs
                .iter()
                .find(|c| c.key() == n.launch_config())
                .cloned()
                .or_else(|| {
                    pass.table
                        .launch_config(&n.instance_type, &n.zone, n.purchase)
                })
                .map_or(0, |c| shape.per_node(&c));
            NodeView {
                id: n.instance_id.clone(),
                holds,
                busy: runs_on(&mine, n),
                price_per_hour: pass.price_of(&n.launch_config()),
            }
        })
        .collect();
    Group {
        cluster,
        pool: pool_name,
        shape,
        configs,
        strategy,
        workers: mine,
        nodes: theirs,
        views,
    }
}

/// Terminate the nodes chosen this tick, at most `max_nodes_removed_per_tick`; those
/// left over, or whose termination failed, stay cordoned for the next tick.
async fn terminate<E: Ec2Api>(
    pass: &NodePass<'_, E>,
    nd: &mut NodeDecision,
    decision: &mut Decision,
) {
    let (now, before) = (pass.now, pass.before);
    let max = pass.ns.max_nodes_removed_per_tick;
    if nd.terminated.len() as u64 > max {
        for id in nd.terminated.split_off(max as usize) {
            decision
                .carried
                .cordoned
                .insert(id.clone(), before.cordoned.get(&id).copied().unwrap_or(now));
        }
        nd.binding_limits
            .push(format!("global max_nodes_removed_per_tick {max}"));
    }
    if nd.terminated.is_empty() {
        return;
    }
    match pass.ec2.terminate(&nd.terminated).await {
        Ok(()) => {
            tracing::info!(nodes = ?nd.terminated, "autoscaler: idle nodes terminated")
        }
        Err(e) => {
            decision
                .errors
                .push(format!("terminating {:?}: {e}", nd.terminated));
            for id in nd.terminated.drain(..) {
                decision
                    .carried
                    .cordoned
                    .insert(id.clone(), before.cordoned.get(&id).copied().unwrap_or(now));
            }
        }
    }
}
