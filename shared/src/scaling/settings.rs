//! The autoscaler's settings (stored, or the deployment's), checked field by field, and
//! the worker shape a pool's workers get.

use crate::domain::autoscale::ReuseTargeting;
use crate::domain::launch::{Limits, Purchase, Strategy};
use crate::domain::prices::PriceTable;
use crate::domain::tiers::{Tier, WorkerPool};
use crate::domain::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long one tick may hold the tick lease.
pub const TICK_LEASE: Duration = Duration::from_secs(300);

/// Backlog cohorts kept per pool (adjacent ones merge beyond this).
pub const MAX_COHORTS: usize = 32;

/// A worker's size in the settings: `{cpu: 4, memory_mib: 16384, gpu: 0}`.
pub type WorkerSize = Tier;

/// The autoscaler's settings (`PUT /v1/autoscaler/settings`); every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The half-life of reuse targeting for teams not listed in `teams`.
    pub default_half_life_seconds: f64,
    /// Per team (namespace): its reuse targeting.
    pub teams: BTreeMap<String, ReuseTargeting>,
    /// Pools with settings of their own; other pools with a backlog get the defaults.
    pub pools: Vec<PoolSettings>,
    /// The team a pool's workers are placed for when its settings name none.
    pub default_team: String,
    /// The size of a queue's own pool's workers (tier pools size theirs from the tier).
    pub default_worker: WorkerSize,
    /// A worker's start-up (launch to taking work) until workers have reported theirs.
    pub startup_seconds: f64,
    /// A task's duration until the pool's workers have reported some.
    pub default_task_seconds: f64,
    /// The most workers one tick adds to one pool.
    pub max_new_workers_per_pool: u32,
    /// EC2 nodes for the workers; without it the clusters' capacity is fixed.
    pub nodes: Option<NodeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_half_life_seconds: ReuseTargeting::default().half_life_seconds,
            teams: BTreeMap::new(),
            pools: Vec::new(),
            default_team: "default".into(),
            default_worker: Tier {
                cpu_milli: 4000,
                memory_mib: 16384,
                gpu: 0,
            },
            startup_seconds: 60.0,
            default_task_seconds: 30.0,
            max_new_workers_per_pool: 100,
            nodes: None,
        }
    }
}

/// One pool's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// The pool's name (`default--t-vision`, `default--t-vision--2cpu-8192mib`): its
    /// queue, its team and its shape.
    pub pool: String,
    /// The pool's team, if given, must be the one its name carries.
    #[serde(default)]
    pub team: Option<String>,
    /// A worker's size; a tier pool's default is as many of its tasks as fit the
    /// default worker (one for GPU tiers).
    #[serde(default)]
    pub worker: Option<WorkerSize>,
    #[serde(default)]
    pub max_workers: Option<u32>,
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// Overrides the team's half-life for this pool.
    #[serde(default)]
    pub half_life_seconds: Option<f64>,
}

/// How workers become EC2 nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Per cluster: the launch template its nodes boot from (joins them to the cluster).
    pub launch_templates: BTreeMap<String, String>,
    /// Availability zones to launch in.
    pub zones: Vec<String>,
    /// Instance types (types, families or `optimal`) for pools whose queue has no
    /// compute environment.
    pub instance_types: Vec<String>,
    /// Spot, on-demand or both, for pools whose queue has no compute environment.
    pub purchase: Vec<Purchase>,
    pub strategy: Strategy,
    /// Limits on the whole fleet, and per launch config (`m5.large:us-east-1a:spot`).
    pub limits: Limits,
    pub config_limits: BTreeMap<String, Limits>,
    /// How long a capacity-limited mark holds.
    pub capacity_mark_seconds: u64,
    /// How long a node must have been unneeded before it is cordoned.
    pub idle_node_seconds: u64,
    pub max_nodes_removed_per_tick: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            launch_templates: BTreeMap::new(),
            zones: Vec::new(),
            instance_types: vec!["optimal".into()],
            purchase: vec![Purchase::Spot, Purchase::OnDemand],
            strategy: Strategy::CheapestFirst,
            limits: Limits::default(),
            config_limits: BTreeMap::new(),
            capacity_mark_seconds: 180,
            idle_node_seconds: 300,
            max_nodes_removed_per_tick: 10,
        }
    }
}

impl Settings {
    /// Parse and check settings; the error names the field.
    pub fn parse(text: &str) -> Result<Settings, FieldError> {
        let s: Settings =
            serde_json::from_str(text).map_err(|e| FieldError::new("settings", e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    /// The settings the deployment was given (`BATCHPLANE_AUTOSCALER_SETTINGS`, JSON),
    /// used until some are stored; the defaults without it.
    pub fn from_env() -> Result<Settings, FieldError> {
        match std::env::var("BATCHPLANE_AUTOSCALER_SETTINGS") {
            Ok(text) if !text.trim().is_empty() => Settings::parse(&text).map_err(|e| {
                FieldError::new(
                    format!("BATCHPLANE_AUTOSCALER_SETTINGS: {}", e.field),
                    e.problem,
                )
            }),
            _ => Ok(Settings::default()),
        }
    }

    /// Check every field's value; the error names the first that is wrong.
    pub fn check(&self) -> Result<(), FieldError> {
        let half_life_ok = |h: f64| h >= 0.0 && !h.is_nan();
        let at_least_zero = "must be 0 or more";
        if !half_life_ok(self.default_half_life_seconds) {
            return Err(FieldError::new("default_half_life_seconds", at_least_zero));
        }
        for (team, r) in &self.teams {
            if !half_life_ok(r.half_life_seconds) {
                return Err(FieldError::new(
                    format!("teams.{team}.half_life_seconds"),
                    at_least_zero,
                ));
            }
        }
        for (field, v) in [
            ("startup_seconds", self.startup_seconds),
            ("default_task_seconds", self.default_task_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(FieldError::new(field, at_least_zero));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            if p.pool.is_empty() {
                return Err(FieldError::new(format!("pools[{i}].pool"), "is empty"));
            }
            let Some(pool) = WorkerPool::parse(&p.pool) else {
                return Err(FieldError::new(
                    format!("pools[{i}].pool"),
                    format!(
                        "{:?} is not a pool name (QUEUE--t-TEAM, or QUEUE--t-TEAM--SHAPE)",
                        p.pool
                    ),
                ));
            };
            if p.team.as_ref().is_some_and(|t| *t != pool.team) {
                return Err(FieldError::new(
                    format!("pools[{i}].team"),
                    format!("the pool {:?} is team {}'s", p.pool, pool.team),
                ));
            }
            if !seen.insert(&p.pool) {
                return Err(FieldError::new(
                    format!("pools[{i}].pool"),
                    format!("{:?} is listed twice", p.pool),
                ));
            }
            if p.half_life_seconds.is_some_and(|h| !half_life_ok(h)) {
                return Err(FieldError::new(
                    format!("pools[{i}].half_life_seconds"),
                    at_least_zero,
                ));
            }
        }
        if let Some(n) = &self.nodes {
            if n.zones.is_empty() {
                return Err(FieldError::new(
                    "nodes.zones",
                    "name at least one availability zone",
                ));
            }
            for (i, t) in n.instance_types.iter().enumerate() {
                if PriceTable::shipped().expand(t).is_empty() {
                    return Err(FieldError::new(
                        format!("nodes.instance_types[{i}]"),
                        format!(
                            "{t:?} is not in the price table ({})",
                            PriceTable::shipped().as_of
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn half_life(&self, team: &str, pool: Option<&PoolSettings>) -> ReuseTargeting {
        if let Some(h) = pool.and_then(|p| p.half_life_seconds) {
            return ReuseTargeting {
                half_life_seconds: h,
            };
        }
        self.teams.get(team).copied().unwrap_or(ReuseTargeting {
            half_life_seconds: self.default_half_life_seconds,
        })
    }
}

/// The settings in force: those stored, else the deployment's
/// (`BATCHPLANE_AUTOSCALER_SETTINGS`), else the defaults; checked.
pub async fn settings_in_force(
    store: &crate::store::Store,
) -> Result<Settings, super::AutoscaleError> {
    let settings: Settings = match store.autoscaler_settings().await? {
        Some(s) => s,
        None => Settings::from_env().map_err(super::AutoscaleError::Settings)?,
    };
    settings.check().map_err(super::AutoscaleError::Settings)?;
    Ok(settings)
}

/// Why a task that needs `need` can never run in `pool`: each resource it asks for
/// more of than the pool's workers have, named with both amounts. `None` when it fits.
/// (A worker is the most one task can get: tasks never span workers.)
pub fn misfit(pool: &WorkerPool, need: Tier, settings: &Settings) -> Option<String> {
    let own = settings.pools.iter().find(|p| p.pool == pool.name());
    let worker = pool_shape(pool, settings, own).worker;
    if need.fits_in(worker) {
        return None;
    }
    let vcpu = |milli: u32| f64::from(milli) / 1000.0;
    let mut short = Vec::new();
    if need.cpu_milli > worker.cpu_milli {
        short.push(format!(
            "{} vCPU (the workers have {})",
            vcpu(need.cpu_milli),
            vcpu(worker.cpu_milli)
        ));
    }
    if need.memory_mib > worker.memory_mib {
        short.push(format!(
            "{} MiB of memory (the workers have {})",
            need.memory_mib, worker.memory_mib
        ));
    }
    if need.gpu > worker.gpu {
        short.push(format!(
            "{} GPU (the workers have {})",
            need.gpu, worker.gpu
        ));
    }
    let sized_by = if own.and_then(|p| p.worker).is_some() {
        format!("the autoscaler settings' pools entry for {}", pool.name())
    } else if pool.shape.is_some() {
        "its tier".to_string()
    } else {
        "the autoscaler settings' default_worker".to_string()
    };
    Some(format!(
        "needs {} but no worker of pool {} can have that much (its workers are sized by {sized_by})",
        short.join(" and "),
        pool.name()
    ))
}

/// What a pool's workers look like: their size and how many tasks each runs at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolShape {
    pub worker: Tier,
    pub slots: u32,
}

/// A pool's worker size: its settings', or for a tier pool as many of its tasks as fit
/// the default worker (one for GPU tiers), or the default worker for a queue's own pool
/// (its tasks counted at a vCPU each).
pub fn pool_shape(pool: &WorkerPool, settings: &Settings, own: Option<&PoolSettings>) -> PoolShape {
    let d = settings.default_worker;
    match (pool.shape, own.and_then(|p| p.worker)) {
        (Some(t), worker) => {
            let fit = if t.gpu > 0 {
                1
            } else {
                (d.cpu_milli / t.cpu_milli.max(1))
                    .min((d.memory_mib / t.memory_mib.max(1)) as u32)
                    .max(1)
            };
            let worker = worker.unwrap_or(Tier {
                cpu_milli: t.cpu_milli * fit,
                memory_mib: t.memory_mib * u64::from(fit),
                gpu: t.gpu * fit,
            });
            let slots = [
                worker.cpu_milli.checked_div(t.cpu_milli),
                u32::try_from(worker.memory_mib / t.memory_mib.max(1)).ok(),
                worker.gpu.checked_div(t.gpu),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .max(1);
            PoolShape { worker, slots }
        }
        (None, worker) => {
            let worker = worker.unwrap_or(d);
            PoolShape {
                worker,
                slots: (worker.cpu_milli / 1000).max(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_larger_than_its_pools_workers_is_named_by_resource() {
        let s = Settings::default();
        let own = WorkerPool::new("default", "vision", None);
        let need = |cpu_milli, memory_mib, gpu| Tier {
            cpu_milli,
            memory_mib,
            gpu,
        };
        assert_eq!(misfit(&own, need(4000, 16384, 0), &s), None);
        let why = misfit(&own, need(64_000, 512, 1), &s).unwrap_or_default();
        assert!(why.contains("64 vCPU (the workers have 4)"), "{why}");
        assert!(why.contains("1 GPU (the workers have 0)"), "{why}");
        assert!(!why.contains("memory"), "{why}");
        assert!(why.contains("default_worker"), "{why}");
        // A tier pool's workers are sized from the tier, unless its settings say less.
        let tier = need(32_000, 262_144, 2);
        let tier_pool = WorkerPool::new("default", "vision", Some(tier));
        assert_eq!(misfit(&tier_pool, tier, &s), None);
        let small = Settings {
            pools: vec![PoolSettings {
                pool: tier_pool.name(),
                team: None,
                worker: Some(need(8000, 32768, 2)),
                max_workers: None,
                gpu_type: None,
                half_life_seconds: None,
            }],
            ..Settings::default()
        };
        let why = misfit(&tier_pool, tier, &small).unwrap_or_default();
        assert!(
            why.contains("262144 MiB of memory (the workers have 32768)"),
            "{why}"
        );
        assert!(why.contains("pools entry"), "{why}");
    }

    #[test]
    pub(super) fn settings_default_and_bad_fields_are_named() {
        let s = Settings::parse("{}").expect("an empty document is the defaults");
        assert_eq!(s, Settings::default());
        let e = Settings::parse(r#"{"teams": {"vision": {"half_life_seconds": -1}}}"#).unwrap_err();
        assert_eq!(e.field, "teams.vision.half_life_seconds", "{e}");
        let e = Settings::parse(
            r#"{"nodes": {"zones": ["us-east-1a"], "instance_types": ["m5.large", "zz9.huge"]}}"#,
        )
        .unwrap_err();
        assert!(
            e.field == "nodes.instance_types[1]" && e.problem.contains("zz9.huge"),
            "{e}"
        );
        let e = Settings::parse(r#"{"nodes": {}}"#).unwrap_err();
        assert_eq!(e.field, "nodes.zones", "{e}");
        let e =
            Settings::parse(r#"{"pools": [{"pool": "a--t-x"}, {"pool": "a--t-x"}]}"#).unwrap_err();
        assert_eq!(e.field, "pools[1].pool", "{e}");
        let e = Settings::parse(r#"{"pools": [{"pool": "a"}]}"#).unwrap_err();
        assert!(e.problem.contains("not a pool name"), "{e}");
        let e = Settings::parse(r#"{"pools": [{"pool": "a--t-x", "team": "y"}]}"#).unwrap_err();
        assert_eq!(e.field, "pools[0].team", "{e}");
        let e = Settings::parse(r#"{"half_life": 3}"#).unwrap_err();
        assert!(e.problem.contains("unknown field `half_life`"), "{e}");
    }

    fn pool(name: &str) -> WorkerPool {
        WorkerPool::parse(name).unwrap_or_else(|| panic!("{name} is not a pool name"))
    }

    #[test]
    pub(super) fn pool_shapes_come_from_the_tier_or_the_default_worker() {
        let s = Settings::default();
        let own = pool_shape(&pool("default--t-x"), &s, None);
        assert_eq!((own.worker, own.slots), (s.default_worker, 4));
        // 1 vCPU, 2 GiB tasks: four fit a 4 vCPU, 16 GiB default worker.
        let tier = pool_shape(&pool("default--t-x--1cpu-2048mib"), &s, None);
        assert_eq!(tier.slots, 4);
        assert_eq!(
            (tier.worker.cpu_milli, tier.worker.memory_mib),
            (4000, 8192)
        );
        // GPU tiers get one task a worker.
        let gpu = pool_shape(&pool("default--t-x--8cpu-32768mib-1gpu"), &s, None);
        assert_eq!((gpu.slots, gpu.worker.gpu), (1, 1));
        // A pool's own worker size wins, its slots follow from the tier.
        let p = PoolSettings {
            pool: "default--t-x--1cpu-2048mib".into(),
            team: None,
            worker: Some(Tier::parse_shape("8:16384").unwrap()),
            max_workers: None,
            gpu_type: None,
            half_life_seconds: None,
        };
        let sized = pool_shape(&pool(&p.pool), &s, Some(&p));
        assert_eq!(sized.slots, 8);
    }
}
