//! Placement: which cluster a team's new workers go to, and whether they may exist at all.
//!
//! Every team has one quota per resource (vCPU, memory, GPUs by type), global across
//! clusters; every cluster has a capacity per resource. A request asks for `workers`
//! workers of one shape for one team's pool. The rule, applied to a consistent snapshot
//! of the team and the clusters:
//!
//! 1. The team's headroom (limit − used, per resource) caps how many workers it may get.
//! 2. Only enabled clusters with room for at least one worker are candidates.
//! 3. Workers are handed out one at a time, each to the candidate where the team has the
//!    fewest workers (spread each team evenly, so no cluster is its single point of
//!    failure), ties to the least utilised cluster (its dominant resource share after the
//!    worker), then by name, so the same snapshot always gives the same answer.
//! 4. Fewer than asked is a grant only when the request allows partial grants; otherwise
//!    it is a refusal whose reason names the binding limit (`team quota exhausted: cpu
//!    96/100`, `no enabled cluster has capacity`).
//!
//! The store turns a grant into one DynamoDB transaction whose conditions re-check the
//! same limits, so a snapshot that went stale only costs a retry, never an overrun.

use super::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The GPU type of a request that names none.
pub const ANY_GPU: &str = "any";

/// Amounts of each resource: a worker's size, a quota, a capacity, a usage. Written as
/// `{cpu: 96, memory_mib: 393216, gpu: {a100: 8}}` (vCPUs, fractions allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ResourceFields", into = "ResourceFields")]
pub struct Resources {
    /// Thousandths of a vCPU.
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// GPUs by type (`a100`, `t4`, `any`).
    pub gpus: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFields {
    cpu: f64,
    memory_mib: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    gpu: BTreeMap<String, u64>,
}

impl TryFrom<ResourceFields> for Resources {
    type Error = String;
    fn try_from(f: ResourceFields) -> Result<Resources, String> {
        if !(f.cpu.is_finite() && f.cpu >= 0.0 && f.cpu <= 1e9) {
            return Err(format!(
                "cpu: {} must be a number of vCPUs, 0 or more",
                f.cpu
            ));
        }
        for t in f.gpu.keys() {
            check_label("gpu", t, 32).map_err(|e| e.to_string())?;
        }
        Ok(Resources {
            cpu_milli: (f.cpu * 1000.0).round() as u64,
            memory_mib: f.memory_mib,
            gpus: f.gpu,
        })
    }
}

impl From<Resources> for ResourceFields {
    fn from(r: Resources) -> ResourceFields {
        ResourceFields {
            cpu: r.cpu_milli as f64 / 1000.0,
            memory_mib: r.memory_mib,
            gpu: r.gpus,
        }
    }
}

/// One resource of [`Resources`], as named in reasons and stored attribute names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
    Gpu(String),
}

impl Resource {
    /// The attribute suffix the store keeps this resource under.
    pub fn key(&self) -> String {
        match self {
            Resource::Cpu => "cpu_milli".into(),
            Resource::Memory => "memory_mib".into(),
            Resource::Gpu(t) => format!("gpu_{t}"),
        }
    }

    /// Parse an attribute suffix back (see [`Resource::key`]).
    pub fn from_key(key: &str) -> Option<Resource> {
        match key {
            "cpu_milli" => Some(Resource::Cpu),
            "memory_mib" => Some(Resource::Memory),
            k => k.strip_prefix("gpu_").map(|t| Resource::Gpu(t.to_string())),
        }
    }

    /// `cpu 96/100`, `memory 2048/4096 MiB`, `gpu a100 8/8`.
    pub fn describe(&self, used: u64, limit: u64) -> String {
        match self {
            Resource::Cpu => format!("cpu {}/{}", vcpus(used), vcpus(limit)),
            Resource::Memory => format!("memory {used}/{limit} MiB"),
            Resource::Gpu(t) => format!("gpu {t} {used}/{limit}"),
        }
    }
}

/// Thousandths of a vCPU as vCPUs, without trailing zeros: `96`, `0.5`.
pub fn vcpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        let s = format!("{:.3}", milli as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

impl Resources {
    pub fn get(&self, r: &Resource) -> u64 {
        match r {
            Resource::Cpu => self.cpu_milli,
            Resource::Memory => self.memory_mib,
            Resource::Gpu(t) => self.gpus.get(t).copied().unwrap_or(0),
        }
    }

    pub fn set(&mut self, r: &Resource, v: u64) {
        match r {
            Resource::Cpu => self.cpu_milli = v,
            Resource::Memory => self.memory_mib = v,
            Resource::Gpu(t) => {
                self.gpus.insert(t.clone(), v);
            }
        }
    }

    /// Every resource named here (CPU and memory always, GPU types present).
    pub fn resources(&self) -> Vec<Resource> {
        let mut all = vec![Resource::Cpu, Resource::Memory];
        all.extend(self.gpus.keys().map(|t| Resource::Gpu(t.clone())));
        all
    }

    /// The resources a worker of this size actually asks for (non-zero amounts).
    pub fn requested(&self) -> Vec<Resource> {
        self.resources()
            .into_iter()
            .filter(|r| self.get(r) > 0)
            .collect()
    }

    /// `k` times this amount.
    pub fn times(&self, k: u64) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli * k,
            memory_mib: self.memory_mib * k,
            gpus: self.gpus.iter().map(|(t, v)| (t.clone(), v * k)).collect(),
        }
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.memory_mib += other.memory_mib;
        for (t, v) in &other.gpus {
            *self.gpus.entry(t.clone()).or_default() += v;
        }
    }

    /// How many workers of size `each` fit in `limit − self`, and the resource that
    /// binds first (`None` when `each` asks for nothing).
    pub fn room_for(&self, limit: &Resources, each: &Resources) -> (u64, Option<Resource>) {
        let mut best: (u64, Option<Resource>) = (u64::MAX, None);
        for r in each.requested() {
            let free = limit.get(&r).saturating_sub(self.get(&r));
            let k = free / each.get(&r);
            if k < best.0 {
                best = (k, Some(r));
            }
        }
        best
    }

    /// `2 vCPU, 8192 MiB, 1 GPU a100`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} vCPU, {} MiB", vcpus(self.cpu_milli), self.memory_mib);
        for (t, v) in &self.gpus {
            if *v > 0 {
                s.push_str(&format!(", {v} GPU {t}"));
            }
        }
        s
    }
}

/// What the placement function is asked: `workers` workers of one shape for one team's
/// pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Names the request: asking again with the same id returns the same grant.
    pub request_id: String,
    pub team: String,
    /// The worker pool the workers will serve.
    pub pool: String,
    /// Per worker: vCPUs (fractions allowed).
    pub cpu: f64,
    /// Per worker.
    pub memory_mib: u64,
    /// Per worker.
    #[serde(default)]
    pub gpu: u32,
    /// The GPU type the workers need (`a100`); `any` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    pub workers: u32,
    /// Whether fewer workers than asked is an acceptable answer.
    #[serde(default)]
    pub allow_partial: bool,
}

/// The most workers one request may ask for.
pub const MAX_WORKERS_PER_REQUEST: u32 = 1000;

/// A name usable in keys, attribute names and Kubernetes labels: 1 to `max` of
/// `[a-z0-9-]`, starting with a letter or digit.
pub fn check_label(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{value:?} must be 1 to {max} of [a-z0-9-], not starting with '-'"),
        ))
    }
}

impl PlacementRequest {
    /// Check the request; the message names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let id_ok = !self.request_id.is_empty()
            && self.request_id.len() <= 64
            && self
                .request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(FieldError::new(
                "request_id",
                format!("{:?} must be 1 to 64 of [A-Za-z0-9_-]", self.request_id),
            ));
        }
        if self.team.is_empty() || self.team.len() > 64 {
            return Err(FieldError::new(
                "team",
                format!("{:?} must be 1 to 64 characters", self.team),
            ));
        }
        if self.pool.is_empty() || self.pool.len() > 80 {
            return Err(FieldError::new(
                "pool",
                format!("{:?} must be 1 to 80 characters", self.pool),
            ));
        }
        // A team pool's workers go on that team's quota, no other.
        if let Some(pool) = crate::tiers::WorkerPool::parse(&self.pool) {
            if pool.team != self.team {
                return Err(FieldError::new(
                    "pool",
                    format!(
                        "{:?} is team {}'s pool: its workers are placed for {}, not {}",
                        self.pool, pool.team, pool.team, self.team
                    ),
                ));
            }
        }
        if !(self.cpu.is_finite() && self.cpu > 0.0 && self.cpu <= 1024.0) {
            return Err(FieldError::new(
                "cpu",
                format!("{} must be more than 0 and at most 1024", self.cpu),
            ));
        }
        if self.memory_mib == 0 || self.memory_mib > 4 * 1024 * 1024 {
            return Err(FieldError::new(
                "memory_mib",
                format!("{} must be 1 to 4194304", self.memory_mib),
            ));
        }
        if self.gpu > 64 {
            return Err(FieldError::new(
                "gpu",
                format!("{} must be at most 64", self.gpu),
            ));
        }
        if let Some(t) = &self.gpu_type {
            check_label("gpu_type", t, 32)?;
        }
        if self.workers == 0 || self.workers > MAX_WORKERS_PER_REQUEST {
            return Err(FieldError::new(
                "workers",
                format!("{} must be 1 to {MAX_WORKERS_PER_REQUEST}", self.workers),
            ));
        }
        Ok(())
    }

    /// The resources of one worker.
    pub fn per_worker(&self) -> Resources {
        let mut r = Resources {
            cpu_milli: (self.cpu * 1000.0).round() as u64,
            memory_mib: self.memory_mib,
            gpus: BTreeMap::new(),
        };
        if self.gpu > 0 {
            r.gpus.insert(
                self.gpu_type.clone().unwrap_or_else(|| ANY_GPU.into()),
                u64::from(self.gpu),
            );
        }
        r
    }
}

/// A team's quota and what its workers hold now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamQuota {
    pub team: String,
    pub limit: Resources,
    pub used: Resources,
    /// Workers the team holds per cluster.
    pub workers: BTreeMap<String, u64>,
}

/// A cluster as placement sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterLoad {
    pub name: String,
    pub enabled: bool,
    pub capacity: Resources,
    pub used: Resources,
}

impl ClusterLoad {
    /// The largest share of any resource in use once `extra` is added: the cluster's
    /// utilisation by its dominant resource, in millionths.
    pub fn dominant_share_with(&self, extra: &Resources) -> u64 {
        let mut used = self.used.clone();
        used.add(extra);
        self.capacity
            .resources()
            .iter()
            .filter(|r| self.capacity.get(r) > 0)
            .map(|r| used.get(r) * 1_000_000 / self.capacity.get(r))
            .max()
            .unwrap_or(0)
    }
}

/// Why a request got nothing (or less than it must have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `NoQuota`, `TeamQuotaExhausted`, `NoClusterCapacity`.
    pub code: String,
    pub reason: String,
}

/// The answer for one request, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Workers per cluster, in cluster-name order; never empty.
    Grant(Vec<(String, u32)>),
    Refuse(Refusal),
}

/// Decide where a request's workers go (see the module doc for the rule). `team` is
/// `None` for a team without a quota: it may not have workers at all.
pub fn decide(
    request: &PlacementRequest,
    team: Option<&TeamQuota>,
    clusters: &[ClusterLoad],
) -> Decision {
    let Some(team) = team else {
        return Decision::Refuse(Refusal {
            code: "NoQuota".into(),
            reason: format!(
                "team {} has no quota: an operator sets one with `batchplane teams set`",
                request.team
            ),
        });
    };
    let each = request.per_worker();
    let asked = u64::from(request.workers);
    let (team_room, team_binding) = team.used.room_for(&team.limit, &each);
    let team_reason = |room: u64| {
        let r = team_binding.clone().unwrap_or(Resource::Cpu);
        let mut reason = format!(
            "team quota exhausted: {}",
            r.describe(team.used.get(&r), team.limit.get(&r))
        );
        if room > 0 {
            reason.push_str(&format!(
                " (room for {room} of the {asked} workers of {} asked for)",
                each.describe()
            ));
        } else {
            reason.push_str(&format!(" (a worker needs {})", each.describe()));
        }
        Refusal {
            code: "TeamQuotaExhausted".into(),
            reason,
        }
    };
    if team_room == 0 || (team_room < asked && !request.allow_partial) {
        return Decision::Refuse(team_reason(team_room));
    }

    let mut loads: Vec<ClusterLoad> = clusters.iter().filter(|c| c.enabled).cloned().collect();
    loads.sort_by(|a, b| a.name.cmp(&b.name));
    let mut team_there: Vec<u64> = loads
        .iter()
        .map(|c| team.workers.get(&c.name).copied().unwrap_or(0))
        .collect();
    let mut granted: Vec<u32> = vec![0; loads.len()];
    let want = asked.min(team_room);
    let mut placed = 0u64;
    while placed < want {
        let best = (0..loads.len())
            .filter(|&i| loads[i].used.room_for(&loads[i].capacity, &each).0 > 0)
            .min_by_key(|&i| {
                (
                    team_there[i],
                    loads[i].dominant_share_with(&each),
                    loads[i].name.clone(),
                )
            });
        let Some(i) = best else { break };
        loads[i].used.add(&each);
        team_there[i] += 1;
        granted[i] += 1;
        placed += 1;
    }
    if placed == 0 || (placed < asked && !request.allow_partial) {
        if placed == team_room && placed > 0 {
            return Decision::Refuse(team_reason(team_room));
        }
        let enabled = clusters.iter().filter(|c| c.enabled).count();
        let reason = if enabled == 0 {
            "no enabled cluster has capacity: every cluster is disabled".to_string()
        } else if placed == 0 {
            format!(
                "no enabled cluster has capacity for a worker of {}",
                each.describe()
            )
        } else {
            format!(
                "no enabled cluster has capacity: room for {placed} of the {asked} workers of {} asked for",
                each.describe()
            )
        };
        return Decision::Refuse(Refusal {
            code: "NoClusterCapacity".into(),
            reason,
        });
    }
    Decision::Grant(
        loads
            .iter()
            .zip(granted)
            .filter(|(_, k)| *k > 0)
            .map(|(c, k)| (c.name.clone(), k))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_milli: cpu * 1000,
            memory_mib: mem,
            gpus: BTreeMap::new(),
        }
    }

    fn request(workers: u32, cpu: f64, mem: u64) -> PlacementRequest {
        PlacementRequest {
            request_id: "r1".into(),
            team: "research".into(),
            pool: "default".into(),
            cpu,
            memory_mib: mem,
            gpu: 0,
            gpu_type: None,
            workers,
            allow_partial: false,
        }
    }

    fn team(limit: Resources, used: Resources) -> TeamQuota {
        TeamQuota {
            team: "research".into(),
            limit,
            used,
            workers: BTreeMap::new(),
        }
    }

    fn cluster(name: &str, cap: Resources, used: Resources) -> ClusterLoad {
        ClusterLoad {
            name: name.into(),
            enabled: true,
            capacity: cap,
            used,
        }
    }

    #[test]
    fn a_team_without_quota_is_refused() {
        let d = decide(&request(1, 1.0, 512), None, &[]);
        assert!(matches!(d, Decision::Refuse(r) if r.code == "NoQuota"));
    }

    #[test]
    fn quota_exhaustion_names_the_binding_resource_in_natural_units() {
        let t = team(res(100, 1_000_000), res(96, 0));
        let c = [cluster("a", res(1000, 1_000_000), res(0, 0))];
        match decide(&request(1, 8.0, 1024), Some(&t), &c) {
            Decision::Refuse(r) => {
                assert_eq!(r.code, "TeamQuotaExhausted");
                assert!(
                    r.reason.starts_with("team quota exhausted: cpu 96/100"),
                    "{}",
                    r.reason
                );
                assert!(r.reason.contains("a worker needs 8 vCPU, 1024 MiB"));
            }
            d => panic!("expected a refusal, got {d:?}"),
        }
        // Memory binds before CPU here.
        let t = team(res(100, 4096), res(0, 3072));
        match decide(&request(2, 1.0, 1024), Some(&t), &c) {
            Decision::Refuse(r) => assert!(
                r.reason
                    .starts_with("team quota exhausted: memory 3072/4096 MiB (room for 1 of the 2"),
                "{}",
                r.reason
            ),
            d => panic!("expected a refusal, got {d:?}"),
        }
    }

    #[test]
    fn partial_grants_only_when_allowed() {
        let t = team(res(4, 1_000_000), res(0, 0));
        let c = [cluster("a", res(100, 1_000_000), res(0, 0))];
        let mut r = request(10, 1.0, 512);
        assert!(matches!(decide(&r, Some(&t), &c), Decision::Refuse(_)));
        r.allow_partial = true;
        assert_eq!(
            decide(&r, Some(&t), &c),
            Decision::Grant(vec![("a".into(), 4)])
        );
    }

    #[test]
    fn workers_spread_across_clusters_and_follow_the_least_utilised() {
        let t = team(res(1000, 10_000_000), res(0, 0));
        let c = [
            cluster("a", res(100, 1_000_000), res(50, 0)),
            cluster("b", res(100, 1_000_000), res(0, 0)),
        ];
        // The team has no workers anywhere: alternate, starting with the emptier cluster.
        assert_eq!(
            decide(&request(4, 1.0, 512), Some(&t), &c),
            Decision::Grant(vec![("a".into(), 2), ("b".into(), 2)])
        );
        assert_eq!(
            decide(&request(1, 1.0, 512), Some(&t), &c),
            Decision::Grant(vec![("b".into(), 1)])
        );
        // The team already has 3 workers in b: new ones go to a until it catches up.
        let mut t2 = t.clone();
        t2.workers.insert("b".into(), 3);
        assert_eq!(
            decide(&request(3, 1.0, 512), Some(&t2), &c),
            Decision::Grant(vec![("a".into(), 3)])
        );
    }

    #[test]
    fn disabled_and_full_clusters_get_nothing() {
        let t = team(res(1000, 10_000_000), res(0, 0));
        let mut a = cluster("a", res(100, 1_000_000), res(0, 0));
        a.enabled = false;
        let b = cluster("b", res(4, 1_000_000), res(2, 0));
        assert_eq!(
            decide(&request(2, 1.0, 512), Some(&t), &[a.clone(), b.clone()]),
            Decision::Grant(vec![("b".into(), 2)])
        );
        match decide(&request(3, 1.0, 512), Some(&t), &[a.clone(), b.clone()]) {
            Decision::Refuse(r) => {
                assert_eq!(r.code, "NoClusterCapacity");
                assert!(r.reason.starts_with("no enabled cluster has capacity"));
            }
            d => panic!("expected a refusal, got {d:?}"),
        }
        match decide(&request(1, 1.0, 512), Some(&t), &[a]) {
            Decision::Refuse(r) => assert!(r.reason.contains("every cluster is disabled")),
            d => panic!("expected a refusal, got {d:?}"),
        }
    }

    #[test]
    fn gpus_are_counted_by_type() {
        let mut limit = res(100, 1_000_000);
        limit.gpus.insert("a100".into(), 2);
        let t = team(limit, res(0, 0));
        let mut cap = res(100, 1_000_000);
        cap.gpus.insert("a100".into(), 8);
        let c = [
            cluster("a", cap, res(0, 0)),
            cluster("b", res(100, 1_000_000), res(0, 0)),
        ];
        let mut r = request(1, 1.0, 512);
        r.gpu = 1;
        r.gpu_type = Some("a100".into());
        // Only a has a100s, though b is as empty.
        assert_eq!(
            decide(&r, Some(&t), &c),
            Decision::Grant(vec![("a".into(), 1)])
        );
        r.workers = 3;
        match decide(&r, Some(&t), &c) {
            Decision::Refuse(r) => assert!(
                r.reason.starts_with("team quota exhausted: gpu a100 0/2"),
                "{}",
                r.reason
            ),
            d => panic!("expected a refusal, got {d:?}"),
        }
        r.gpu_type = Some("t4".into());
        r.workers = 1;
        assert!(matches!(decide(&r, Some(&t), &c), Decision::Refuse(_)));
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let mut r = request(1, 1.0, 512);
        assert!(r.validate().is_ok());
        r.workers = 0;
        assert_eq!(r.validate().unwrap_err().field, "workers");
        r.workers = 1;
        r.gpu_type = Some("A100".into());
        assert_eq!(r.validate().unwrap_err().field, "gpu_type");
        r.gpu_type = None;
        r.request_id = "a b".into();
        assert_eq!(r.validate().unwrap_err().field, "request_id");
        r.request_id = "r1".into();
        r.pool = format!("default--t-someone-else-{}", r.team);
        assert_eq!(r.validate().unwrap_err().field, "pool");
        r.pool = format!("default--t-{}", r.team);
        assert!(r.validate().is_ok());
    }

    #[test]
    fn vcpus_print_without_trailing_zeros() {
        assert_eq!(vcpus(96_000), "96");
        assert_eq!(vcpus(500), "0.5");
        assert_eq!(vcpus(1250), "1.25");
    }
}
