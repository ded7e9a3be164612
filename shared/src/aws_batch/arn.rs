//! ARNs of the resources the AWS Batch API hands out. They name the running deployment's
//! partition, region and account: the SAM template sets `BATCHPLANE_PARTITION` and
//! `BATCHPLANE_ACCOUNT_ID` from `AWS::Partition` and `AWS::AccountId`, and Lambda sets
//! `AWS_REGION`. The local stack has none of them and names `aws`, `us-east-1` and
//! `000000000000`, as moto does.

/// Where the deployment's ARNs point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnContext {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl Default for ArnContext {
    /// What the local stack (and moto) name: `aws`, `us-east-1`, `000000000000`.
    fn default() -> ArnContext {
        ArnContext {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account: "000000000000".into(),
        }
    }
}

impl ArnContext {
    /// This process's, read from the environment once.
    pub fn current() -> &'static ArnContext {
        static CURRENT: std::sync::OnceLock<ArnContext> = std::sync::OnceLock::new();
        CURRENT.get_or_init(ArnContext::from_env)
    }

    pub fn from_env() -> ArnContext {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        ArnContext {
            partition: var("BATCHPLANE_PARTITION", "aws"),
            region: var("AWS_REGION", "us-east-1"),
            account: var("BATCHPLANE_ACCOUNT_ID", "000000000000"),
        }
    }

    /// `arn:<partition>:batch:<region>:<account>:<kind>/<name>`.
    pub fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:{}:batch:{}:{}:{kind}/{name}",
            self.partition, self.region, self.account
        )
    }
}

/// The ARN of a Batch resource of this deployment.
pub fn arn(kind: &str, name: &str) -> String {
    ArnContext::current().arn(kind, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_the_deployments_partition_region_and_account() {
        let cn = ArnContext {
            partition: "aws-cn".into(),
            region: "cn-north-1".into(),
            account: "123456789012".into(),
        };
        assert_eq!(
            cn.arn("job-queue", "research"),
            "arn:aws-cn:batch:cn-north-1:123456789012:job-queue/research"
        );
    }

    /// The deployed functions learn their account and partition from the template; without
    /// it every ARN a stack returned named account 000000000000.
    #[test]
    fn the_template_passes_the_account_and_partition_to_every_function() {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
        )
        .expect("infra/template.yaml");
        let globals = &template[template.find("Globals:").expect("a Globals section")
            ..template.find("Resources:").expect("a Resources section")];
        assert!(
            globals.contains("BATCHPLANE_ACCOUNT_ID: !Ref AWS::AccountId"),
            "Globals must set BATCHPLANE_ACCOUNT_ID"
        );
        assert!(
            globals.contains("BATCHPLANE_PARTITION: !Ref AWS::Partition"),
            "Globals must set BATCHPLANE_PARTITION"
        );
    }
}
