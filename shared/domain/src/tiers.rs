//! Resource tiers and worker pools.
//!
//! A task may list worker configs from small to large (`tiers`). It runs on the first;
//! an attempt that dies of memory exhaustion is tried again on the next, bigger tier,
//! without using up the retry budget meant for other errors, and an OOM on the last tier
//! fails the task. Most tasks then reserve what most tasks need, and only the few that
//! need more pay for more.
//!
//! Workers are grouped into pools by (queue, shape): every pool has a queue of its own,
//! so a task escalated to a big tier is only ever picked up by a worker of that shape.
//! Tasks without tiers go to the queue's own pool, whose workers take any task that fits.

use super::error::FieldError;
use serde::{Deserialize, Serialize};

/// The most tiers one task may list.
pub const MAX_TIERS: usize = 8;

/// One worker config: what a task reserves (and is held to) on that tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "TierFields", into = "TierFields")]
pub struct Tier {
    /// Thousandths of a vCPU.
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: u32,
}

/// A tier as written in a spec: `{cpu: 2, memory_mib: 8192, gpu: 1}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFields {
    cpu: f64,
    memory_mib: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    gpu: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TryFrom<TierFields> for Tier {
    type Error = String;
    fn try_from(f: TierFields) -> Result<Tier, String> {
        if !(f.cpu.is_finite() && f.cpu > 0.0 && f.cpu <= 1024.0) {
            return Err(format!(
                "cpu {} must be more than 0 and at most 1024",
                f.cpu
            ));
        }
        if f.memory_mib == 0 || f.memory_mib > 4 * 1024 * 1024 {
            return Err(format!("memory_mib {} must be 1 to 4194304", f.memory_mib));
        }
        if f.gpu > 64 {
            return Err(format!("gpu {} must be at most 64", f.gpu));
        }
        Ok(Tier {
            cpu_milli: (f.cpu * 1000.0).round() as u32,
            memory_mib: f.memory_mib,
            gpu: f.gpu,
        })
    }
}

impl From<Tier> for TierFields {
    fn from(t: Tier) -> TierFields {
        TierFields {
            cpu: f64::from(t.cpu_milli) / 1000.0,
            memory_mib: t.memory_mib,
            gpu: t.gpu,
        }
    }
}

impl Tier {
    /// Nothing: no CPU, memory or GPU.
    pub const ZERO: Tier = Tier {
        cpu_milli: 0,
        memory_mib: 0,
        gpu: 0,
    };

    pub fn cpu(&self) -> f64 {
        f64::from(self.cpu_milli) / 1000.0
    }

    /// Whether this much fits in `room`, resource by resource.
    pub fn fits_in(self, room: Tier) -> bool {
        self.cpu_milli <= room.cpu_milli
            && self.memory_mib <= room.memory_mib
            && self.gpu <= room.gpu
    }

    /// Both amounts together (saturating: amounts are bounded by what a worker offers).
    pub fn plus(self, other: Tier) -> Tier {
        Tier {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            gpu: self.gpu.saturating_add(other.gpu),
        }
    }

    /// What is left of this after `other`, none below zero on any resource.
    pub fn minus(self, other: Tier) -> Tier {
        Tier {
            cpu_milli: self.cpu_milli.saturating_sub(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }

    /// A name for the shape usable in queue names: `2cpu-8192mib`, `500mcpu-512mib-1gpu`.
    pub fn label(&self) -> String {
        let cpu = if self.cpu_milli.is_multiple_of(1000) {
            format!("{}cpu", self.cpu_milli / 1000)
        } else {
            format!("{}mcpu", self.cpu_milli)
        };
        let mut label = format!("{cpu}-{}mib", self.memory_mib);
        if self.gpu > 0 {
            label.push_str(&format!("-{}gpu", self.gpu));
        }
        label
    }

    /// The shape a [`Tier::label`] names, if `label` is one.
    pub fn from_label(label: &str) -> Option<Tier> {
        let parts: Vec<&str> = label.split('-').collect();
        if !(2..=3).contains(&parts.len()) {
            return None;
        }
        let cpu_milli: u32 = match parts[0].strip_suffix("mcpu") {
            Some(m) => m.parse().ok()?,
            None => parts[0]
                .strip_suffix("cpu")?
                .parse::<u32>()
                .ok()?
                .checked_mul(1000)?,
        };
        let memory_mib = parts[1].strip_suffix("mib")?.parse().ok()?;
        let gpu = match parts.get(2) {
            Some(g) => g.strip_suffix("gpu")?.parse().ok()?,
            None => 0,
        };
        let t = Tier {
            cpu_milli,
            memory_mib,
            gpu,
        };
        (cpu_milli > 0 && memory_mib > 0 && t.label() == label).then_some(t)
    }

    /// Parse `CPU:MEMORY_MIB[:GPU]` (the taskhost's `--tier` and the local stack's
    /// `--pool`), e.g. `2:8192` or `8:32768:1`.
    pub fn parse_shape(text: &str) -> Result<Tier, String> {
        let parts: Vec<&str> = text.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "{text:?}: expected CPU:MEMORY_MIB[:GPU], e.g. 2:8192"
            ));
        }
        let cpu: f64 = parts[0]
            .parse()
            .map_err(|_| format!("{text:?}: cpu {:?} is not a number", parts[0]))?;
        let memory_mib: u64 = parts[1]
            .parse()
            .map_err(|_| format!("{text:?}: memory {:?} is not a whole MiB", parts[1]))?;
        let gpu: u32 = match parts.get(2) {
            Some(g) => g
                .parse()
                .map_err(|_| format!("{text:?}: gpu {g:?} is not a count"))?,
            None => 0,
        };
        Tier::try_from(TierFields {
            cpu,
            memory_mib,
            gpu,
        })
        .map_err(|e| format!("{text:?}: {e}"))
    }

    pub fn describe(&self) -> String {
        let mut d = format!("{} vCPU, {} MiB", self.cpu(), self.memory_mib);
        if self.gpu > 0 {
            d.push_str(&format!(", {} GPU", self.gpu));
        }
        d
    }
}

/// Check a tier list: 1 to [`MAX_TIERS`] tiers, each with more memory than the one
/// before (an OOM escalation must get more memory) and no fewer CPUs or GPUs. The error
/// names the tier (`tiers[1].memory_mib: …`).
pub fn validate_tiers(tiers: &[Tier]) -> Result<(), FieldError> {
    if tiers.len() > MAX_TIERS {
        return Err(FieldError::new(
            "tiers",
            format!("{} tiers; at most {MAX_TIERS}", tiers.len()),
        ));
    }
    for (i, pair) in tiers.windows(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        if b.memory_mib <= a.memory_mib {
            return Err(FieldError::new(
                format!("tiers[{}].memory_mib", i + 1),
                format!(
                    "{} must be more than tiers[{i}]'s {} (tiers go from small to large)",
                    b.memory_mib, a.memory_mib
                ),
            ));
        }
        if b.cpu_milli < a.cpu_milli {
            return Err(FieldError::new(
                format!("tiers[{}].cpu", i + 1),
                format!("{} is less than tiers[{i}]'s {}", b.cpu(), a.cpu()),
            ));
        }
        if b.gpu < a.gpu {
            return Err(FieldError::new(
                format!("tiers[{}].gpu", i + 1),
                format!("{} is less than tiers[{i}]'s {}", b.gpu, a.gpu),
            ));
        }
    }
    Ok(())
}

/// What an out-of-memory attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomOutcome {
    /// Run again on this tier (its index); the retry budget is not charged.
    Escalate { tier: u32, shape: Tier },
    /// It was the largest tier: the task fails ([`OOM_ON_LARGEST_TIER`]).
    LargestTier,
    /// The task has no tiers: an OOM is a failure like any other, and the retry
    /// strategy decides.
    NoTiers,
}

/// The reason of an attempt killed for exceeding its memory limit: AWS Batch's own, so
/// the usual `evaluateOnExit` rules (`onReason: "OutOfMemoryError*"`) match it.
pub const OUT_OF_MEMORY: &str = "OutOfMemoryError: Container killed due to memory usage";
/// The reason a task fails with when it runs out of memory on its last tier (it starts
/// with [`OUT_OF_MEMORY`], so the same rules match).
pub const OOM_ON_LARGEST_TIER: &str =
    "OutOfMemoryError: Container killed due to memory usage, on the largest tier";

/// Where a task goes after running out of memory on tier `current`.
pub fn after_oom(tiers: &[Tier], current: u32) -> OomOutcome {
    if tiers.is_empty() {
        return OomOutcome::NoTiers;
    }
    match tiers.get(current as usize + 1) {
        Some(shape) => OomOutcome::Escalate {
            tier: current + 1,
            shape: *shape,
        },
        None => OomOutcome::LargestTier,
    }
}

/// Attempts that count against the retry budget: every attempt except those that ended
/// in an escalation (one per tier climbed).
pub fn budgeted_attempts(attempt: u32, tier: u32) -> u32 {
    attempt.saturating_sub(tier)
}

/// A worker pool: the workers of one queue, one team, one container and one shape. A
/// pool's workers are placed on its team's quota and run only its team's tasks, so a
/// quota bounds what a team uses and tasks of two teams never share a worker; they run
/// in the pool's container (image and job role), so neither do tasks of two images.
/// Tasks without tiers use the queue's own pool for their team (`shape: None`); tasks
/// that name no image use the deployment's worker image (`container: None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerPool {
    pub queue: String,
    pub team: String,
    /// The key of the pool's container ([`crate::containers::Container::key`]).
    pub container: Option<String>,
    pub shape: Option<Tier>,
}

/// Between a queue's name and a shape's label in a pool's name.
const POOL_SEPARATOR: &str = "--";
/// Before the team in a pool's name.
const TEAM_SEPARATOR: &str = "--t-";
/// Before the container's key in a pool's name.
const CONTAINER_SEPARATOR: &str = "--c-";

impl WorkerPool {
    pub fn new(
        queue: impl Into<String>,
        team: impl Into<String>,
        shape: Option<Tier>,
    ) -> WorkerPool {
        WorkerPool {
            queue: queue.into(),
            team: team.into(),
            container: None,
            shape,
        }
    }

    /// The same pool for tasks that run in the container of key `key` (`None`: the
    /// deployment's worker image).
    pub fn in_container(mut self, key: Option<String>) -> WorkerPool {
        self.container = key;
        self
    }

    /// The pool of the same team and container for tasks of another shape (a tier).
    pub fn of_shape(&self, shape: Option<Tier>) -> WorkerPool {
        WorkerPool {
            shape,
            ..self.clone()
        }
    }

    /// The pool a task of `team` is in on tier `tier` of `tiers` (the queue's own pool
    /// for the team without tiers).
    pub fn for_task(queue: &str, team: &str, tiers: &[Tier], tier: u32) -> WorkerPool {
        WorkerPool::new(queue, team, tiers.get(tier as usize).copied())
    }

    /// The pool a queue name stands for: `default--t-vision--2cpu-8192mib` is team
    /// vision's 2 vCPU, 8 GiB pool of queue `default`; `default--t-vision` its pool of
    /// tasks without tiers; `default--t-vision--c-0123456789ab` its pool of tasks in
    /// container `0123456789ab`. A name without a team (a queue's own SQS queue) is no
    /// pool.
    pub fn parse(name: &str) -> Option<WorkerPool> {
        let (rest, shape) = match name.rsplit_once(POOL_SEPARATOR) {
            Some((rest, label)) => match Tier::from_label(label) {
                Some(shape) => (rest, Some(shape)),
                None => (name, None),
            },
            None => (name, None),
        };
        let (rest, container) = match rest.rsplit_once(CONTAINER_SEPARATOR) {
            Some((r, key)) if crate::containers::is_key(key) => (r, Some(key.to_string())),
            _ => (rest, None),
        };
        let (queue, team) = rest.rsplit_once(TEAM_SEPARATOR)?;
        (!queue.is_empty() && crate::ids::is_valid_team(team))
            .then(|| WorkerPool::new(queue, team, shape).in_container(container))
    }

    /// The pool's name, also the name of its queue: `default--t-vision`,
    /// `default--t-vision--2cpu-8192mib`, `default--t-vision--c-0123456789ab--2cpu-8192mib`.
    pub fn name(&self) -> String {
        let mut name = format!("{}{TEAM_SEPARATOR}{}", self.queue, self.team);
        if let Some(key) = &self.container {
            name.push_str(CONTAINER_SEPARATOR);
            name.push_str(key);
        }
        if let Some(t) = &self.shape {
            name.push_str(POOL_SEPARATOR);
            name.push_str(&t.label());
        }
        name
    }
}

impl std::fmt::Display for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(cpu: f64, mem: u64, gpu: u32) -> Tier {
        Tier::try_from(TierFields {
            cpu,
            memory_mib: mem,
            gpu,
        })
        .unwrap()
    }

    #[test]
    fn pool_names_parse_back_to_their_queue_team_and_shape() {
        for pool in [
            WorkerPool::new("default", "vision", None),
            WorkerPool::new("default", "vision", Some(tier(2.0, 8192, 0))),
            WorkerPool::new("gpu-jobs", "a_b", Some(tier(0.5, 512, 1))),
            WorkerPool::new("a--b", "research", Some(tier(16.0, 65536, 0))),
            WorkerPool::new("default", "vision", None).in_container(Some("0123456789ab".into())),
            WorkerPool::new("q--c-x", "v", Some(tier(2.0, 8192, 0)))
                .in_container(Some("abcdef012345".into())),
        ] {
            assert_eq!(WorkerPool::parse(&pool.name()), Some(pool));
        }
        // A queue's own SQS queue, whatever its name, is no team's pool.
        assert_eq!(WorkerPool::parse("nightly--batch"), None);
        assert_eq!(WorkerPool::parse("default"), None);
        assert_eq!(WorkerPool::parse("default--2cpu-8192mib"), None);
    }

    #[test]
    fn tiers_parse_from_spec_fields_and_round_trip() {
        let t: Vec<Tier> = serde_json::from_str(
            r#"[{"cpu": 1, "memory_mib": 1024}, {"cpu": 0.5, "memory_mib": 2048, "gpu": 1}]"#,
        )
        .unwrap();
        assert_eq!(t[0], tier(1.0, 1024, 0));
        assert_eq!(t[1].cpu_milli, 500);
        let back = serde_json::to_string(&t).unwrap();
        assert_eq!(
            back,
            r#"[{"cpu":1.0,"memory_mib":1024},{"cpu":0.5,"memory_mib":2048,"gpu":1}]"#
        );
        let bad = serde_json::from_str::<Vec<Tier>>(r#"[{"cpu": 0, "memory_mib": 1}]"#);
        assert!(bad.unwrap_err().to_string().contains("cpu 0"));
        let unknown = serde_json::from_str::<Vec<Tier>>(r#"[{"cpu": 1, "memory": 1}]"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn tiers_must_grow_in_memory_and_never_shrink() {
        let ok = [tier(1.0, 1024, 0), tier(2.0, 8192, 0), tier(8.0, 32768, 1)];
        validate_tiers(&ok).unwrap();
        let flat = [tier(1.0, 1024, 0), tier(2.0, 1024, 0)];
        let e = validate_tiers(&flat).unwrap_err();
        assert_eq!(e.field, "tiers[1].memory_mib", "{e}");
        let fewer_cpus = [tier(2.0, 1024, 0), tier(1.0, 2048, 0)];
        assert_eq!(
            validate_tiers(&fewer_cpus).unwrap_err().field,
            "tiers[1].cpu"
        );
        let many: Vec<Tier> = (1..=9).map(|i| tier(1.0, i * 100, 0)).collect();
        assert!(validate_tiers(&many)
            .unwrap_err()
            .to_string()
            .contains("at most 8"));
    }

    #[test]
    fn an_oom_climbs_one_tier_and_fails_on_the_last() {
        let t = [tier(1.0, 1024, 0), tier(2.0, 8192, 0), tier(8.0, 32768, 1)];
        assert_eq!(
            after_oom(&t, 0),
            OomOutcome::Escalate {
                tier: 1,
                shape: t[1]
            }
        );
        assert_eq!(
            after_oom(&t, 1),
            OomOutcome::Escalate {
                tier: 2,
                shape: t[2]
            }
        );
        assert_eq!(after_oom(&t, 2), OomOutcome::LargestTier);
        assert_eq!(after_oom(&[], 0), OomOutcome::NoTiers);
        // Two escalations and a third attempt: one attempt of the budget used.
        assert_eq!(budgeted_attempts(3, 2), 1);
    }

    #[test]
    fn pools_are_named_by_queue_team_and_shape() {
        assert_eq!(
            WorkerPool::for_task("default", "vision", &[], 0).name(),
            "default--t-vision"
        );
        let t = [tier(1.0, 1024, 0), tier(0.5, 2048, 1)];
        assert_eq!(
            WorkerPool::for_task("jq", "vision", &t, 0).name(),
            "jq--t-vision--1cpu-1024mib"
        );
        assert_eq!(
            WorkerPool::for_task("jq", "vision", &t, 1).name(),
            "jq--t-vision--500mcpu-2048mib-1gpu"
        );
        assert_eq!(Tier::parse_shape("8:32768:1").unwrap(), tier(8.0, 32768, 1));
        assert!(Tier::parse_shape("8")
            .unwrap_err()
            .contains("CPU:MEMORY_MIB"));
        assert!(Tier::parse_shape("x:1")
            .unwrap_err()
            .contains("not a number"));
    }
}
