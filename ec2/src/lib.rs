//! The EC2 side of the autoscaler: nodes for worker pools from instant fleets.
//!
//! [`Ec2Api`] is the narrow seam over the EC2 calls actually made (CreateFleet of type
//! `instant` with a launch template and one override, DescribeSpotPriceHistory,
//! TerminateInstances), implemented by [`Ec2`] over the SDK. [`launch_nodes`] walks a
//! pool's ranked launch configs: it asks for the nodes a config may have under the limits,
//! and when EC2 gives fewer than asked (or refuses with InsufficientInstanceCapacity or a
//! spot limit) it marks that config capacity-limited in the store, with an expiry, and
//! asks the next config for the rest in the same tick.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceType, ResourceType, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};
use batchplane::domain::launch::{plan_nodes, Fleet, LaunchConfig, Limits, Purchase, WorkerShape};
use batchplane::store::capacity::CapacityMark;
use batchplane::store::{now_ms, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// What can go wrong calling EC2, sorted into what the autoscaler acts on.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// No capacity for this config now (InsufficientInstanceCapacity, a spot limit):
    /// mark it and try the next.
    #[error("{operation}: no capacity: {code}: {message}")]
    NoCapacity {
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("{operation} failed: {code}: {message}")]
    Request {
        operation: &'static str,
        code: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// EC2 error codes that mean "this launch config has no capacity now".
pub fn is_capacity_error(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "InsufficientCapacity"
            | "InsufficientHostCapacity"
            | "InsufficientReservedInstanceCapacity"
            | "MaxSpotInstanceCountExceeded"
            | "SpotMaxPriceTooLow"
            | "UnfulfillableCapacity"
            | "InstanceLimitExceeded"
            | "VcpuLimitExceeded"
    )
}

fn classify<E, R>(operation: &'static str, err: aws_sdk_ec2::error::SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("unknown").to_string();
    let message = err
        .message()
        .map(String::from)
        .unwrap_or_else(|| err.to_string());
    if is_capacity_error(&code) {
        return Ec2Error::NoCapacity {
            operation,
            code,
            message,
        };
    }
    Ec2Error::Request {
        operation,
        code,
        message,
        source: Some(Box::new(err)),
    }
}

/// One instant fleet: `nodes` instances of one launch config from a launch template.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRequest {
    pub launch_template: String,
    pub config: LaunchConfig,
    pub nodes: u64,
    /// Tags on every instance (cost accounting: team, pool).
    pub tags: BTreeMap<String, String>,
}

/// What an instant fleet gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetOutcome {
    pub instance_ids: Vec<String>,
    /// Errors EC2 reported for the fleet, `(code, message)`.
    pub errors: Vec<(String, String)>,
}

/// A spot price for one instance type in one zone.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub instance_type: String,
    pub zone: String,
    pub dollars_per_hour: f64,
}

/// The EC2 calls the autoscaler makes.
pub trait Ec2Api: Send + Sync {
    /// Launch an instant fleet; instances EC2 could not give come back as errors.
    fn create_fleet(
        &self,
        request: &FleetRequest,
    ) -> impl Future<Output = Result<FleetOutcome, Ec2Error>> + Send;

    /// Current spot prices (Linux/UNIX) for these instance types.
    fn spot_prices(
        &self,
        instance_types: &[String],
    ) -> impl Future<Output = Result<Vec<SpotPrice>, Ec2Error>> + Send;

    /// Terminate instances (scale-down; their taskhosts have drained).
    fn terminate(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// [`Ec2Api`] over the AWS SDK.
#[derive(Clone)]
pub struct Ec2 {
    pub client: aws_sdk_ec2::Client,
}

impl Ec2 {
    /// Make sure the launch template exists (nodes boot from it); an existing one with
    /// the name is kept.
    pub async fn ensure_launch_template(
        &self,
        name: &str,
        image_id: &str,
        user_data: &str,
    ) -> Result<(), Ec2Error> {
        use base64::Engine;
        let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .image_id(image_id)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
            .build();
        match self
            .client
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(data)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidLaunchTemplateName.AlreadyExistsException") => {
                Ok(())
            }
            Err(e) => Err(classify("CreateLaunchTemplate", e)),
        }
    }
}

impl Ec2Api for Ec2 {
    async fn create_fleet(&self, r: &FleetRequest) -> Result<FleetOutcome, Ec2Error> {
        let capacity_type = match r.config.purchase {
            Purchase::Spot => DefaultTargetCapacityType::Spot,
            Purchase::OnDemand => DefaultTargetCapacityType::OnDemand,
        };
        let target = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(r.nodes as i32)
            .default_target_capacity_type(capacity_type)
            .build();
        let config = FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(
                FleetLaunchTemplateSpecificationRequest::builder()
                    .launch_template_name(&r.launch_template)
                    .version("$Latest")
                    .build(),
            )
            .overrides(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(InstanceType::from(r.config.instance_type.as_str()))
                    .availability_zone(&r.config.zone)
                    .build(),
            )
            .build();
        let tags = r
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Vec<_>>();
        let out = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(config)
            .target_capacity_specification(target)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateFleet", e))?;
        Ok(FleetOutcome {
            instance_ids: out
                .instances()
                .iter()
                .flat_map(|i| i.instance_ids().iter().cloned())
                .collect(),
            errors: out
                .errors()
                .iter()
                .map(|e| {
                    (
                        e.error_code().unwrap_or("unknown").to_string(),
                        e.error_message().unwrap_or("").to_string(),
                    )
                })
                .collect(),
        })
    }

    async fn spot_prices(&self, instance_types: &[String]) -> Result<Vec<SpotPrice>, Ec2Error> {
        let out = self
            .client
            .describe_spot_price_history()
            .set_instance_types(Some(
                instance_types
                    .iter()
                    .map(|t| InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .product_descriptions("Linux/UNIX")
            .send()
            .await
            .map_err(|e| classify("DescribeSpotPriceHistory", e))?;
        Ok(out
            .spot_price_history()
            .iter()
            .filter_map(|p| {
                Some(SpotPrice {
                    instance_type: p.instance_type()?.as_str().to_string(),
                    zone: p.availability_zone()?.to_string(),
                    dollars_per_hour: p.spot_price()?.parse().ok()?,
                })
            })
            .collect())
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), Ec2Error> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map_err(|e| classify("TerminateInstances", e))?;
        Ok(())
    }
}

/// Apply current spot prices to spot launch configs (the lowest price seen for the type
/// in the config's zone); on-demand configs keep their list price.
pub fn with_spot_prices(configs: &mut [LaunchConfig], prices: &[SpotPrice]) {
    for c in configs.iter_mut().filter(|c| c.purchase == Purchase::Spot) {
        if let Some(p) = prices
            .iter()
            .filter(|p| p.instance_type == c.instance_type && p.zone == c.zone)
            .map(|p| p.dollars_per_hour)
            .min_by(f64::total_cmp)
        {
            c.price_per_hour = p;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchNodesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

/// What one pool's node launch did this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodesLaunched {
    /// `(launch config, instance ids)` in the order asked.
    pub fleets: Vec<(String, Vec<String>)>,
    /// Configs marked capacity-limited this tick, with the reason.
    pub marked: Vec<(String, String)>,
    pub unplaced_workers: u64,
    pub binding_limits: Vec<String>,
}

/// Everything [`launch_nodes`] needs besides the pool's shape and worker count.
pub struct LaunchContext<'a, E: Ec2Api> {
    pub store: &'a Store,
    pub ec2: &'a E,
    pub launch_template: &'a str,
    /// Ranked best first (see `domain::launch::rank`); marked configs are skipped.
    pub ranked: Vec<LaunchConfig>,
    pub global: Fleet,
    pub global_limits: Limits,
    pub per_config: BTreeMap<String, Fleet>,
    pub config_limits: BTreeMap<String, Limits>,
    /// How long a capacity-limited mark holds (default 3 minutes).
    pub mark_for: Duration,
    pub tags: BTreeMap<String, String>,
}

/// Get nodes for `workers` workers of `shape`: one config at a time in rank order, under
/// the limits; a config that comes back short is marked capacity-limited and the rest is
/// asked of the next config, in the same tick.
pub async fn launch_nodes<E: Ec2Api>(
    ctx: &mut LaunchContext<'_, E>,
    shape: &WorkerShape,
    workers: u64,
) -> Result<NodesLaunched, LaunchNodesError> {
    let mut done = NodesLaunched::default();
    let marks: BTreeSet<String> = ctx
        .store
        .capacity_marks(now_ms())
        .await?
        .into_iter()
        .map(|m| m.launch_config)
        .collect();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut left = workers;
    while left > 0 {
        let candidates: Vec<&LaunchConfig> = ctx
            .ranked
            .iter()
            .filter(|c| !marks.contains(&c.key()) && !tried.contains(&c.key()))
            .collect();
        let plan = plan_nodes(
            left,
            shape,
            &candidates,
            &mut ctx.global.clone(),
            &ctx.global_limits,
            &mut ctx.per_config.clone(),
            &ctx.config_limits,
        );
        for l in &plan.binding_limits {
            if !done.binding_limits.contains(l) {
                done.binding_limits.push(l.clone());
            }
        }
        let Some(first) = plan.requests.first() else {
            break;
        };
        let Some(config) = candidates
            .iter()
            .find(|c| c.key() == first.launch_config)
            .map(|c| (*c).clone())
        else {
            break;
        };
        let key = config.key();
        tried.insert(key.clone());
        let asked = first.nodes;
        let outcome = match ctx
            .ec2
            .create_fleet(&FleetRequest {
                launch_template: ctx.launch_template.to_string(),
                config: config.clone(),
                nodes: asked,
                tags: ctx.tags.clone(),
            })
            .await
        {
            Ok(o) => o,
            Err(Ec2Error::NoCapacity { code, message, .. }) => FleetOutcome {
                instance_ids: Vec::new(),
                errors: vec![(code, message)],
            },
            Err(e) => return Err(e.into()),
        };
        let got = outcome.instance_ids.len() as u64;
        let per_node = shape.per_node(&config);
        left = left.saturating_sub(got * per_node);
        for f in [
            &mut ctx.global,
            ctx.per_config.entry(key.clone()).or_default(),
        ] {
            f.nodes += got;
            f.added_this_tick += got;
            f.dollars_per_hour += got as f64 * config.price_per_hour;
        }
        if got > 0 {
            done.fleets
                .push((key.clone(), outcome.instance_ids.clone()));
        }
        if got < asked {
            let why = match outcome.errors.first() {
                Some((code, message)) => format!("{code}: {message} (got {got} of {asked})"),
                None => format!("got {got} of {asked} instances"),
            };
            let now = now_ms();
            ctx.store
                .mark_capacity_limited(&CapacityMark {
                    launch_config: key.clone(),
                    reason: why.clone(),
                    marked_at: now,
                    until: now + ctx.mark_for.as_millis() as i64,
                })
                .await?;
            tracing::warn!(launch_config = %key, reason = %why, "launch config came back short; trying the next");
            done.marked.push((key, why));
        }
    }
    done.unplaced_workers = left;
    Ok(done)
}
