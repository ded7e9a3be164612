//! Placement items decoded, and the update expressions their writes are built from.

use crate::domain::placement::{Resource, Resources, TeamQuota};
use crate::store::item::*;
use crate::store::StoreError;
use aws_sdk_dynamodb::types::{AttributeValue, Update};
use std::collections::{BTreeMap, HashMap};

use super::*;

pub(super) fn resources_with_prefix(item: &Item, prefix: &str) -> Resources {
    let mut r = Resources::default();
    for (k, v) in item {
        if let (Some(rest), AttributeValue::N(num)) = (k.strip_prefix(prefix), v) {
            if let (Some(res), Ok(x)) = (Resource::from_key(rest), num.parse::<i64>()) {
                r.set(&res, x.max(0) as u64);
            }
        }
    }
    r
}

pub(super) fn has_prefix(item: &Item, prefix: &str) -> bool {
    item.keys().any(|k| k.starts_with(prefix))
}

pub(super) fn team_from_item(team: &str, item: &Item) -> TeamRecord {
    let mut workers = BTreeMap::new();
    let mut refusals = BTreeMap::new();
    for (k, v) in item {
        match (k.strip_prefix("workers@"), k.strip_prefix("refused@"), v) {
            (Some(c), _, AttributeValue::N(num)) => {
                let n = num.parse::<i64>().unwrap_or(0).max(0) as u64;
                if n > 0 {
                    workers.insert(c.to_string(), n);
                }
            }
            (_, Some(pool), AttributeValue::S(json)) => {
                if let Ok(r) = serde_json::from_str::<RecordedRefusal>(json) {
                    refusals.insert(pool.to_string(), r);
                }
            }
            _ => {}
        }
    }
    TeamRecord {
        quota_set: has_prefix(item, "limit_"),
        quota: TeamQuota {
            team: team.to_string(),
            limit: resources_with_prefix(item, "limit_"),
            used: resources_with_prefix(item, "used_"),
            workers,
        },
        refusals,
    }
}

pub(super) fn cluster_from_item(item: &Item) -> Result<ClusterRecord, StoreError> {
    let r = Reader::new(item);
    Ok(ClusterRecord {
        name: r.req_s("sk")?,
        kind: r.opt_s("kind")?.unwrap_or_else(|| "eks".into()),
        region: r.opt_s("region")?.unwrap_or_default(),
        eks_cluster_name: r.opt_s("eks_cluster_name")?.unwrap_or_default(),
        endpoint: r.opt_s("endpoint")?.unwrap_or_default(),
        certificate_authority: r.opt_s("certificate_authority")?,
        namespace: r.opt_s("namespace")?.unwrap_or_default(),
        enabled: r.bool("enabled"),
        capacity: resources_with_prefix(item, "capacity_"),
        used: resources_with_prefix(item, "used_"),
        updated_at: r.opt_n("updated_at")?.unwrap_or(0),
    })
}

pub(super) fn reservation_from_item(item: &Item) -> Result<Reservation, StoreError> {
    let r = Reader::new(item);
    let mut slots = BTreeMap::new();
    if let Some(AttributeValue::Ns(ns)) = item.get("slots") {
        for k in ns {
            if let Ok(k) = k.parse::<u32>() {
                let lease = r.opt_n(&format!("lease_{k}"))?.unwrap_or(0);
                slots.insert(k, lease);
            }
        }
    }
    let mut per_worker = Resources {
        cpu_milli: r.req_n("cpu_milli")?,
        memory_mib: r.req_n("memory_mib")?,
        gpus: BTreeMap::new(),
    };
    let gpu: u64 = r.opt_n("gpu")?.unwrap_or(0);
    if gpu > 0 {
        per_worker
            .gpus
            .insert(r.opt_s("gpu_type")?.unwrap_or_default(), gpu);
    }
    Ok(Reservation {
        reservation_id: r.req_s("sk")?,
        request_id: r.req_s("request_id")?,
        team: r.req_s("team")?,
        pool: r.req_s("pool_name")?,
        cluster: r.req_s("cluster")?,
        per_worker,
        slots,
        created_at: r.opt_n("created_at")?.unwrap_or(0),
    })
}

/// The parts of an Update: expression, names, values.
#[derive(Default)]
pub(super) struct Expr {
    pub(super) add: Vec<String>,
    pub(super) delete: Vec<String>,
    pub(super) set: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) condition: Vec<String>,
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
}

impl Expr {
    pub(super) fn name(&mut self, attr: String) -> String {
        let p = format!("#a{}", self.names.len());
        self.names.insert(p.clone(), attr);
        p
    }

    pub(super) fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    pub(super) fn update(self, table: &str, key: Item) -> Result<Update, StoreError> {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        if !self.delete.is_empty() {
            parts.push(format!("DELETE {}", self.delete.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(parts.join(" "))
            .set_condition_expression(
                (!self.condition.is_empty()).then(|| self.condition.join(" AND ")),
            )
            .set_expression_attribute_names((!self.names.is_empty()).then_some(self.names))
            .set_expression_attribute_values((!self.values.is_empty()).then_some(self.values))
            .build()
            .map_err(build("TransactWriteItems"))
    }
}

pub(super) fn signed(v: u64, negative: bool) -> AttributeValue {
    if negative {
        n(-(v as i64))
    } else {
        n(v)
    }
}
