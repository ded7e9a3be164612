//! Nodes for the pools: launch what the workers need from ranked launch configs, cordon
//! and retire empty nodes.

use super::fleet::{
    launch_nodes, with_spot_prices, Ec2Api, LaunchContext, LaunchNodesError, Node, TAG_CLUSTER,
    TAG_POOL, TAG_TEAM,
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
        // Launch configs: the settings' (for queues without compute environments).
        let table = PriceTable::shipped();
        let mut default_configs = Vec::new();
        for t in &ns.instance_types {
            for i in table.expand(t) {
                for z in &ns.zones {
                    for p in &ns.purchase {
                        if let Some(c) = table.launch_config(&i.name, z, *p) {
                            default_configs.push(c);
                        }
                    }
                }
            }
        }
        // Spot prices, once for every spot type in play.
        let spot_types: BTreeSet<String> = default_configs
            .iter()
            .chain(compute.values().flat_map(|c| c.configs.iter()))
            .filter(|c| c.purchase == Purchase::Spot)
            .map(|c| c.instance_type.clone())
            .collect();
        let prices = if spot_types.is_empty() {
            Vec::new()
        } else {
            match ec2
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
        };
        with_spot_prices(&mut default_configs, &prices);
        let price_of = |key: &str| -> f64 {
            default_configs
                .iter()
                .chain(compute.values().flat_map(|c| c.configs.iter()))
                .find(|c| c.key() == key)
                .map_or(0.0, |c| c.price_per_hour)
        };
        let mut global = Fleet::default();
        let mut per_config: BTreeMap<String, Fleet> = BTreeMap::new();
        for n in &nodes {
            let key = n.launch_config();
            let price = price_of(&key).max(table.get(&n.instance_type).map_or(0.0, |i| {
                if n.purchase == Purchase::Spot {
                    0.0
                } else {
                    i.on_demand_per_hour
                }
            }));
            for f in [&mut global, per_config.entry(key).or_default()] {
                f.nodes += 1;
                f.dollars_per_hour += price;
            }
        }
        nd.nodes = global.nodes;
        nd.dollars_per_hour = global.dollars_per_hour;

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
        let mut surplus_all: Vec<(&Node, String)> = Vec::new();
        for (cluster, pool_name) in groups {
            let pool = WorkerPool::parse(&pool_name);
            let own = settings.pools.iter().find(|p| p.pool == pool_name);
            let shape = pool_shape(&pool, settings, own);
            let ws = WorkerShape {
                cpu_milli: u64::from(shape.worker.cpu_milli),
                memory_mib: shape.worker.memory_mib,
                gpus: shape.worker.gpu,
            };
            let qc = compute.get(&pool.queue).filter(|c| !c.configs.is_empty());
            let mut configs = qc.map_or_else(|| default_configs.clone(), |c| c.configs.clone());
            with_spot_prices(&mut configs, &prices);
            let strategy = qc.and_then(|c| c.strategy).unwrap_or(ns.strategy);
            let mine: Vec<&LaunchedWorker> = workers
                .iter()
                .filter(|w| w.cluster == cluster && w.pool == pool_name)
                .collect();
            let theirs: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.tag(TAG_CLUSTER) == cluster && n.tag(TAG_POOL) == pool_name)
                .collect();
            let views: Vec<NodeView> = theirs
                .iter()
                .filter(|n| !before.cordoned.contains_key(&n.instance_id))
                .map(|n| {
                    let holds = configs
                        .iter()
                        .find(|c| c.key() == n.launch_config())
                        .cloned()
                        .or_else(|| table.launch_config(&n.instance_type, &n.zone, n.purchase))
                        .map_or(0, |c| ws.per_node(&c));
                    NodeView {
                        id: n.instance_id.clone(),
                        holds,
                        busy: mine.iter().any(|w| {
                            w.node
                                .as_deref()
                                .is_some_and(|x| x == n.name || x == n.instance_id)
                        }),
                        price_per_hour: price_of(&n.launch_config()),
                    }
                })
                .collect();
            let count = mine.len() as u64;
            let short = workers_without_room(&views, count);
            if short > 0 {
                let Some(template) = ns.launch_templates.get(&cluster) else {
                    decision.errors.push(format!(
                        "cluster {cluster}: {short} workers of {pool_name} need nodes, but nodes.launch_templates names no template for it"
                    ));
                    continue;
                };
                let team = mine
                    .first()
                    .map_or_else(|| settings.default_team.clone(), |w| w.team.clone());
                let limited = self
                    .store
                    .capacity_marks(now)
                    .await?
                    .into_iter()
                    .map(|m| m.launch_config)
                    .collect();
                let ranked: Vec<LaunchConfig> = rank(&configs, &ws, strategy, &limited)
                    .into_iter()
                    .cloned()
                    .collect();
                let mut ctx = LaunchContext {
                    store: self.store,
                    ec2,
                    launch_template: template,
                    ranked,
                    global,
                    global_limits: ns.limits,
                    per_config: per_config.clone(),
                    config_limits: ns.config_limits.clone(),
                    mark_for: Duration::from_secs(ns.capacity_mark_seconds),
                    tags: BTreeMap::from([
                        (TAG_CLUSTER.to_string(), cluster.clone()),
                        (TAG_POOL.to_string(), pool_name.clone()),
                        (TAG_TEAM.to_string(), team),
                    ]),
                };
                match launch_nodes(&mut ctx, &ws, short).await {
                    Ok(done) => {
                        for (key, ids) in done.fleets {
                            nd.fleets.push(FleetDecision {
                                cluster: cluster.clone(),
                                pool: pool_name.clone(),
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
                        .push(format!("nodes for {pool_name} in {cluster}: {e}")),
                }
                global = ctx.global;
                per_config = ctx.per_config;
            }
            for id in surplus_nodes(&views, count) {
                if let Some(n) = theirs.iter().find(|n| n.instance_id == id) {
                    surplus_all.push((n, cluster.clone()));
                }
            }
            // Cordoned nodes go once nothing runs on them.
            for n in theirs
                .iter()
                .filter(|n| before.cordoned.contains_key(&n.instance_id))
            {
                let busy = mine.iter().any(|w| {
                    w.node
                        .as_deref()
                        .is_some_and(|x| x == n.name || x == n.instance_id)
                });
                if busy {
                    decision
                        .carried
                        .cordoned
                        .insert(n.instance_id.clone(), before.cordoned[&n.instance_id]);
                } else {
                    nd.terminated.push(n.instance_id.clone());
                }
            }
        }

        // Unneeded nodes: idle for a while, then cordoned; terminated on a later tick.
        let idle_for = ns.idle_node_seconds as i64 * 1000;
        for (n, cluster) in surplus_all {
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
        let max = ns.max_nodes_removed_per_tick;
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
        if !nd.terminated.is_empty() {
            match ec2.terminate(&nd.terminated).await {
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
        Ok(nd)
    }
}
