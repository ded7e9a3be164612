//! The on-demand price table shipped with Batchplane (`shared/domain/data/ec2-prices.json`):
//! instance types with their vCPUs, memory, GPUs and list price, and the date the prices
//! were taken. The autoscaler turns compute environments' instance types into launch
//! configs with it; spot prices replace the list price from DescribeSpotPriceHistory.

use super::launch::{LaunchConfig, Purchase};
use serde::Deserialize;
use std::sync::OnceLock;

/// One instance type in the table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstanceType {
    #[serde(rename = "type")]
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    pub gpu_type: Option<String>,
    pub architecture: String,
    pub on_demand_per_hour: f64,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PriceTable {
    pub region: String,
    /// When the prices were taken (`YYYY-MM-DD`).
    pub as_of: String,
    pub currency: String,
    pub source: String,
    pub instances: Vec<InstanceType>,
}

/// What the kubelet, the container runtime and daemon sets keep of a node: 100 mCPU and
/// a tenth of its memory. Workers are packed into the rest.
pub const RESERVED_CPU_MILLI: u64 = 100;
pub const RESERVED_MEMORY_FRACTION: f64 = 0.10;

impl PriceTable {
    /// The table shipped in the binary.
    pub fn shipped() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            // Built into the binary and parsed by a unit test, so this cannot fail in a
            // build that passed its tests; if it does, say where and why.
            serde_json::from_str(include_str!("../data/ec2-prices.json")).unwrap_or_else(|e| {
                panic!("shared/domain/data/ec2-prices.json is not a price table: {e}")
            })
        })
    }

    pub fn get(&self, instance_type: &str) -> Option<&InstanceType> {
        self.instances.iter().find(|i| i.name == instance_type)
    }

    /// Instance types of the table matching a compute environment's `instanceTypes`
    /// entry: a type (`m5.2xlarge`), a family (`m5`), or `optimal` (the current general
    /// purpose, compute and memory families, as AWS Batch picks from).
    pub fn expand(&self, entry: &str) -> Vec<&InstanceType> {
        let families: &[&str] = if entry == "optimal" {
            &["m6i", "c6i", "r6i"]
        } else {
            std::slice::from_ref(&entry)
        };
        self.instances
            .iter()
            .filter(|i| {
                i.name == entry
                    || families
                        .iter()
                        .any(|f| i.name.split('.').next() == Some(*f))
            })
            .collect()
    }

    /// A launch config for an instance type in a zone; its price is the list price
    /// (spot configs get theirs from DescribeSpotPriceHistory before ranking). The
    /// resources are what a node offers to workers, after [`RESERVED_CPU_MILLI`] and
    /// [`RESERVED_MEMORY_FRACTION`].
    pub fn launch_config(
        &self,
        instance_type: &str,
        zone: &str,
        purchase: Purchase,
    ) -> Option<LaunchConfig> {
        let i = self.get(instance_type)?;
        Some(LaunchConfig {
            instance_type: i.name.clone(),
            zone: zone.to_string(),
            purchase,
            cpu_milli: u64::from(i.vcpus) * 1000 - RESERVED_CPU_MILLI,
            memory_mib: (i.memory_mib as f64 * (1.0 - RESERVED_MEMORY_FRACTION)) as u64,
            gpus: i.gpus,
            price_per_hour: i.on_demand_per_hour,
            reserved: false,
            capacity_score: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_is_dated() {
        let t = PriceTable::shipped();
        assert_eq!(t.region, "us-east-1");
        assert!(
            t.as_of.len() == 10 && t.as_of.starts_with("20"),
            "{}",
            t.as_of
        );
        assert!(t.instances.len() > 50);
        for i in &t.instances {
            assert!(
                i.on_demand_per_hour > 0.0 && i.vcpus > 0 && i.memory_mib > 0,
                "{i:?}"
            );
            assert_eq!(i.gpus > 0, i.gpu_type.is_some(), "{i:?}");
        }
        assert_eq!(
            t.get("m5.2xlarge").map(|i| i.on_demand_per_hour),
            Some(0.384)
        );
    }

    #[test]
    fn entries_expand_to_types_families_or_optimal() {
        let t = PriceTable::shipped();
        assert_eq!(t.expand("g5.xlarge").len(), 1);
        assert!(t.expand("c5").iter().all(|i| i.name.starts_with("c5.")));
        let optimal = t.expand("optimal");
        assert!(
            optimal.iter().any(|i| i.name.starts_with("r6i.")),
            "{optimal:?}"
        );
        assert!(t.expand("x99").is_empty());
        let c = t
            .launch_config("m5.large", "us-east-1b", Purchase::Spot)
            .expect("m5.large is in the table");
        assert_eq!((c.cpu_milli, c.memory_mib), (1900, 7372));
        assert_eq!(c.key(), "m5.large:us-east-1b:spot");
    }
}
