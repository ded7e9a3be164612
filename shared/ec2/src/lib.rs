//! The EC2 adapter of the autoscaler: [`Ec2`] implements the [`Ec2Api`] seam of
//! `batchplane::nodes` over the AWS SDK (instant fleets from a launch template with one
//! override, spot prices, the managed nodes, termination), and makes sure the launch
//! template exists. Only this crate builds `aws-sdk-ec2`.

pub use batchplane::scaling::fleet::*;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceLifecycleType, InstanceType, ResourceType, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};
use batchplane::domain::launch::Purchase;

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

    async fn nodes(&self, deployment: &str) -> Result<Vec<Node>, Ec2Error> {
        let mut nodes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{TAG_MANAGED}"))
                        .values(deployment)
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .values("pending")
                        .values("running")
                        .build(),
                )
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("DescribeInstances", e))?;
            for i in out.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                nodes.push(Node {
                    instance_id: id.to_string(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    purchase: match i.instance_lifecycle() {
                        Some(InstanceLifecycleType::Spot) => Purchase::Spot,
                        _ => Purchase::OnDemand,
                    },
                    name: i.private_dns_name().unwrap_or(id).to_string(),
                    launched_at: i
                        .launch_time()
                        .map(|t| t.to_millis().unwrap_or(0))
                        .unwrap_or(0),
                    tags: i
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect(),
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(nodes)
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
