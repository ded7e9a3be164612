//! `batchplane bench-tiers`: what resource tiers save, simulated. A workload shaped like
//! the one Aurora describes (most tasks under 1 GiB, a few percent up to 30 GiB) is run
//! through the tier policy — the same escalation rule the taskhost applies
//! ([`batchplane::domain::tiers::after_oom`]) — and through the policy without tiers,
//! where every task is sized for the largest. Reports reserved versus used memory-hours
//! for each and the ratio between them. A benchmark of the policy, not of the code:
//! deterministic for a seed, no AWS involved.

use crate::bench::rng::Rng;
use batchplane::domain::tiers::{after_oom, validate_tiers, OomOutcome, Tier, WorkerPool};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TierBenchArgs {
    /// Workload sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    tasks: Vec<usize>,
    /// Tier memory sizes in MiB, small to large (1 vCPU each).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,32768")]
    tiers_mib: Vec<u64>,
    /// Share of tasks whose peak is above 1 GiB (up to 30 GiB).
    #[arg(long, default_value_t = 0.04)]
    large_share: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "bench-results/tiers.json")]
    out: PathBuf,
}

/// One task of the workload: its peak memory and how long it runs when it fits.
struct SimTask {
    peak_mib: f64,
    seconds: f64,
}

fn workload(n: usize, large_share: f64, seed: u64) -> Vec<SimTask> {
    let mut rng = Rng(seed.max(1));
    (0..n)
        .map(|_| {
            let peak_mib = if rng.next_f64() < large_share {
                rng.log_uniform(1024.0, 30.0 * 1024.0)
            } else {
                rng.log_uniform(64.0, 1000.0)
            };
            SimTask {
                peak_mib,
                seconds: rng.log_uniform(60.0, 900.0),
            }
        })
        .collect()
}

/// Memory grows linearly to its peak over the run and averages this share of it.
const AVERAGE_OF_PEAK: f64 = 0.7;

#[derive(Debug, Default, Serialize)]
struct PolicyResult {
    reserved_gib_hours: f64,
    used_gib_hours: f64,
    /// used / reserved.
    utilisation: f64,
    attempts: u64,
    /// Attempts that ran out of memory and moved up a tier.
    escalations: u64,
    /// Task-hours spent in attempts that ran out of memory, as a share of all.
    lost_time_share: f64,
    /// Attempts by the pool they ran in.
    attempts_by_pool: BTreeMap<String, u64>,
}

fn gib_hours(mib: f64, seconds: f64) -> f64 {
    mib / 1024.0 * seconds / 3600.0
}

/// Run the workload through the tier policy: each task starts on the first tier and
/// climbs one tier per out-of-memory attempt, as the taskhost does.
fn simulate(tasks: &[SimTask], tiers: &[Tier]) -> PolicyResult {
    let mut r = PolicyResult::default();
    let (mut lost, mut total) = (0.0, 0.0);
    for t in tasks {
        let mut tier = 0u32;
        loop {
            let shape = tiers[tier as usize];
            *r.attempts_by_pool
                .entry(WorkerPool::for_task("default", "default", tiers, tier).name())
                .or_default() += 1;
            r.attempts += 1;
            let limit = shape.memory_mib as f64;
            if t.peak_mib <= limit {
                r.reserved_gib_hours += gib_hours(limit, t.seconds);
                r.used_gib_hours += gib_hours(t.peak_mib * AVERAGE_OF_PEAK, t.seconds);
                total += t.seconds;
                break;
            }
            // Killed when its memory reaches the limit, part way through.
            let seconds = t.seconds * limit / t.peak_mib;
            r.reserved_gib_hours += gib_hours(limit, seconds);
            r.used_gib_hours += gib_hours(limit / 2.0, seconds);
            lost += seconds;
            total += seconds;
            match after_oom(tiers, tier) {
                OomOutcome::Escalate { tier: next, .. } => {
                    r.escalations += 1;
                    tier = next;
                }
                // The workload never exceeds the largest tier (checked by the caller).
                OomOutcome::LargestTier | OomOutcome::NoTiers => break,
            }
        }
    }
    r.utilisation = r.used_gib_hours / r.reserved_gib_hours;
    r.lost_time_share = lost / total;
    r
}

#[derive(Debug, Serialize)]
struct SizeResult {
    tasks: usize,
    tiers_mib: Vec<u64>,
    without_tiers: PolicyResult,
    with_tiers: PolicyResult,
    /// Reserved memory-hours without tiers over with tiers.
    reserved_ratio: f64,
}

/// Tiers of 1 vCPU and these sizes.
fn one_vcpu_tiers(memory_mib: &[u64]) -> Vec<Tier> {
    memory_mib
        .iter()
        .map(|m| Tier {
            cpu_milli: 1000,
            memory_mib: *m,
            gpu: 0,
        })
        .collect()
}

pub fn run(args: &TierBenchArgs) -> anyhow::Result<u8> {
    let tiers = one_vcpu_tiers(&args.tiers_mib);
    validate_tiers(&tiers).map_err(|e| anyhow::anyhow!("--tiers-mib: {e}"))?;
    let Some(largest) = tiers.last().copied() else {
        anyhow::bail!("--tiers-mib: give at least one tier");
    };
    if (largest.memory_mib as f64) < 30.0 * 1024.0 {
        anyhow::bail!("--tiers-mib: the largest tier must hold the workload's 30 GiB tasks");
    }
    let mut results = Vec::new();
    println!(
        "{:>9}  {:<14} {:>14} {:>14} {:>8} {:>9} {:>11} {:>9}",
        "tasks",
        "policy",
        "reserved GiB·h",
        "used GiB·h",
        "used %",
        "attempts",
        "escalations",
        "lost %"
    );
    for &n in &args.tasks {
        let work = workload(n, args.large_share, args.seed);
        let without = simulate(&work, &[largest]);
        let with = simulate(&work, &tiers);
        for (name, r) in [("largest only", &without), ("tiers", &with)] {
            println!(
                "{:>9}  {:<14} {:>14.1} {:>14.1} {:>7.1}% {:>9} {:>11} {:>8.2}%",
                n,
                name,
                r.reserved_gib_hours,
                r.used_gib_hours,
                100.0 * r.utilisation,
                r.attempts,
                r.escalations,
                100.0 * r.lost_time_share
            );
        }
        let ratio = without.reserved_gib_hours / with.reserved_gib_hours;
        println!("{n:>9}  reserved without tiers / with tiers: {ratio:.1}×");
        results.push(SizeResult {
            tasks: n,
            tiers_mib: args.tiers_mib.clone(),
            without_tiers: without,
            with_tiers: with,
            reserved_ratio: ratio,
        });
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)?;
    println!("wrote {}", args.out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_reserve_less_than_sizing_for_the_largest_and_every_task_ends_fitting() {
        let tiers = one_vcpu_tiers(&[1024, 4096, 32768]);
        let work = workload(2000, 0.04, 7);
        let with = simulate(&work, &tiers);
        let without = simulate(&work, &tiers[2..]);
        assert!(with.reserved_gib_hours < without.reserved_gib_hours / 5.0);
        assert_eq!(without.escalations, 0);
        // Every escalation is one extra attempt, and the large tasks needed some.
        assert_eq!(with.attempts, 2000 + with.escalations);
        assert!(with.escalations > 0);
        assert!(with.used_gib_hours >= without.used_gib_hours);
    }
}
