//! What EKS itself reports about a cluster: the only endpoint and certificate a cluster
//! token is sent to. A registration naming another endpoint (an attacker's server, or
//! a typo) would hand the autoscaler's EKS token — good for the whole cluster — to
//! whoever answers there, so it is refused.

use crate::domain::FieldError;
use crate::store::placement::ClusterRegistration;

/// A cluster as EKS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedCluster {
    pub endpoint: String,
    /// Base64 of the PEM bundle, as `aws eks describe-cluster` gives it.
    pub certificate_authority: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EksError {
    #[error("EKS has no cluster named {name:?} in {region}")]
    NoSuchCluster { name: String, region: String },
    #[error("asking EKS about cluster {name:?}: {message}")]
    Unavailable {
        name: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// DescribeCluster `name` in `region` (through `endpoints.eks` when set).
pub async fn describe_cluster(
    endpoints: &crate::aws::Endpoints,
    region: &str,
    name: &str,
) -> Result<ReportedCluster, EksError> {
    let shared = crate::aws::sdk_config(endpoints).await;
    let mut conf = aws_sdk_eks::config::Builder::from(&shared)
        .interceptor(crate::aws::CountRequests)
        .region(aws_sdk_eks::config::Region::new(region.to_string()));
    if let Some(url) = &endpoints.eks {
        conf = conf.endpoint_url(url);
    }
    let eks = aws_sdk_eks::Client::from_conf(conf.build());
    let out = match eks.describe_cluster().name(name).send().await {
        Ok(out) => out,
        Err(e) => {
            let not_found = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception());
            if not_found {
                return Err(EksError::NoSuchCluster {
                    name: name.into(),
                    region: region.into(),
                });
            }
            return Err(EksError::Unavailable {
                name: name.into(),
                message: e.to_string(),
                source: Some(Box::new(e)),
            });
        }
    };
    let cluster = out.cluster().ok_or_else(|| EksError::Unavailable {
        name: name.into(),
        message: "DescribeCluster answered without a cluster".into(),
        source: None,
    })?;
    let endpoint = cluster
        .endpoint()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| EksError::Unavailable {
            name: name.into(),
            message: "the cluster has no endpoint yet (is it still being created?)".into(),
            source: None,
        })?;
    Ok(ReportedCluster {
        endpoint: endpoint.to_string(),
        certificate_authority: cluster
            .certificate_authority()
            .and_then(|c| c.data())
            .map(String::from),
    })
}

fn same_endpoint(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The registration as it may be stored: its endpoint must be the one EKS reports, its
/// certificate too when it names one; a registration without one gets EKS's.
pub fn verified(
    mut reg: ClusterRegistration,
    reported: &ReportedCluster,
) -> Result<ClusterRegistration, FieldError> {
    if !same_endpoint(&reg.endpoint, &reported.endpoint) {
        return Err(FieldError::new(
            "endpoint",
            format!(
                "{:?} is not the endpoint EKS reports for cluster {:?} ({:?}): a cluster token goes only to EKS's own endpoint",
                reg.endpoint, reg.eks_cluster_name, reported.endpoint
            ),
        ));
    }
    match (&reg.certificate_authority, &reported.certificate_authority) {
        (Some(given), Some(eks)) if given.trim() != eks.trim() => {
            return Err(FieldError::new(
                "certificate_authority",
                format!(
                    "is not the certificate EKS reports for cluster {:?}",
                    reg.eks_cluster_name
                ),
            ))
        }
        (None, Some(eks)) => reg.certificate_authority = Some(eks.clone()),
        _ => {}
    }
    reg.endpoint = reported.endpoint.clone();
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(endpoint: &str, ca: Option<&str>) -> ClusterRegistration {
        ClusterRegistration {
            kind: "eks".into(),
            region: "us-east-1".into(),
            eks_cluster_name: "prod".into(),
            endpoint: endpoint.into(),
            certificate_authority: ca.map(String::from),
            namespace: "batchplane".into(),
            capacity: Default::default(),
        }
    }

    #[test]
    fn only_the_endpoint_and_certificate_eks_reports_are_accepted() {
        let eks = ReportedCluster {
            endpoint: "https://ABC.gr7.us-east-1.eks.amazonaws.com".into(),
            certificate_authority: Some("Q0E=".into()),
        };
        let ok = verified(
            reg("https://abc.gr7.us-east-1.eks.amazonaws.com/", None),
            &eks,
        )
        .unwrap_or_else(|e| panic!("the same endpoint is refused: {e}"));
        assert_eq!(ok.certificate_authority.as_deref(), Some("Q0E="));
        assert_eq!(ok.endpoint, eks.endpoint);
        let e = verified(reg("https://evil.example.com", None), &eks).unwrap_err();
        assert_eq!(e.field, "endpoint");
        assert!(e.problem.contains("ABC.gr7"), "{}", e.problem);
        let e = verified(reg(&eks.endpoint, Some("T1RIRVI=")), &eks).unwrap_err();
        assert_eq!(e.field, "certificate_authority");
    }
}
