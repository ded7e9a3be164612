//! Cluster registrations: capacity per resource, enabled or not.

use crate::store::item::*;
use crate::store::{Store, StoreError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::items::*;
use super::*;

impl Store {
    /// Register a cluster or update its registration and capacity; usage is kept, and a
    /// new cluster starts enabled.
    pub async fn register_cluster(
        &self,
        name: &str,
        reg: &ClusterRegistration,
    ) -> Result<(), StoreError> {
        let current = self.get_item(CLUSTERS_PK.into(), name.to_string()).await?;
        let mut e = Expr::default();
        for (attr, v) in [
            ("kind", &reg.kind),
            ("region", &reg.region),
            ("eks_cluster_name", &reg.eks_cluster_name),
            ("endpoint", &reg.endpoint),
            ("namespace", &reg.namespace),
        ] {
            let name = e.name(attr.into());
            let value = e.value(s(v));
            e.set.push(format!("{name} = {value}"));
        }
        match &reg.certificate_authority {
            Some(ca) => {
                let value = e.value(s(ca));
                e.set.push(format!("certificate_authority = {value}"));
            }
            None => e.remove.push("certificate_authority".into()),
        }
        for r in reg.capacity.resources() {
            let name = e.name(format!("capacity_{}", r.key()));
            let value = e.value(n(reg.capacity.get(&r)));
            e.set.push(format!("{name} = {value}"));
        }
        if let Some(item) = &current {
            for k in item.keys().filter(|k| k.starts_with("capacity_gpu_")) {
                if !reg
                    .capacity
                    .gpus
                    .contains_key(k.trim_start_matches("capacity_gpu_"))
                {
                    let name = e.name(k.clone());
                    e.remove.push(name);
                }
            }
        }
        let t = e.value(AttributeValue::Bool(true));
        let now = e.value(n(self.now()));
        e.set.push(format!(
            "enabled = if_not_exists(enabled, {t}), updated_at = {now}"
        ));
        let update = e.update(&self.table, key(CLUSTERS_PK.into(), name.to_string()))?;
        self.send_update(update).await
    }

    /// Enable or disable a cluster. A disabled cluster gets no new placements; its
    /// workers drain. An error names a cluster that was never registered.
    pub async fn set_cluster_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let v = e.value(AttributeValue::Bool(enabled));
        let now = e.value(n(self.now()));
        e.set.push(format!("enabled = {v}, updated_at = {now}"));
        e.condition.push("attribute_exists(pk)".into());
        let update = e.update(&self.table, key(CLUSTERS_PK.into(), name.to_string()))?;
        self.send_update(update).await
    }

    /// Every registered cluster, by name (a consistent read: placement decides on it).
    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(CLUSTERS_PK))
                    .consistent_read(true)
            })
            .await?;
        items.iter().map(cluster_from_item).collect()
    }
}
