//! EKS bearer tokens from AWS credentials, the scheme `aws eks get-token` uses: a
//! presigned STS GetCallerIdentity URL whose signature covers an `x-k8s-aws-id` header
//! naming the cluster, base64url-encoded without padding behind `k8s-aws-v1.`. The API
//! server's authenticator calls the URL; the caller's IAM identity is who it is.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use std::time::{Duration, SystemTime};

/// What EKS accepts as a token's lifetime (the presigned URL's `X-Amz-Expires`). The
/// token is good for 15 minutes after signing whatever this says; 60 s is what the AWS
/// CLI signs with.
pub const PRESIGN_EXPIRES: Duration = Duration::from_secs(60);

/// The header naming the cluster, covered by the signature.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The default chain has no provider at all.
    #[error("no AWS credentials to mint an EKS token with: no credentials provider configured")]
    NoProvider,
    #[error("no AWS credentials to mint an EKS token with: {source}")]
    NoCredentials {
        #[source]
        source: aws_credential_types::provider::error::CredentialsError,
    },
    #[error("signing the EKS token's STS request: {source}")]
    Signing {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn signing(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> TokenError {
    TokenError::Signing { source: e.into() }
}

/// An EKS token for `cluster_name` in `region`, signed at `now` with `credentials`.
pub fn eks_token(
    credentials: &Credentials,
    region: &str,
    cluster_name: &str,
    now: SystemTime,
) -> Result<String, TokenError> {
    let url =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRES);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(signing)?
        .into();
    let headers = [(CLUSTER_ID_HEADER, cluster_name)];
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(signing)?;
    let (instructions, _signature) = sign(signable, &params).map_err(signing)?.into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .header(CLUSTER_ID_HEADER, cluster_name)
        .body(())
        .map_err(signing)?;
    instructions.apply_to_request_http1x(&mut request);
    let presigned = request.uri().to_string();
    Ok(format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned)
    ))
}

/// Credentials from the default chain (the Lambda's role, a profile, the environment).
pub async fn default_credentials() -> Result<Credentials, TokenError> {
    use aws_credential_types::provider::ProvideCredentials;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let provider = config
        .credentials_provider()
        .ok_or(TokenError::NoProvider)?;
    provider
        .provide_credentials()
        .await
        .map_err(|source| TokenError::NoCredentials { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> String {
        let b64 = token.strip_prefix("k8s-aws-v1.").expect("the token prefix");
        assert!(!b64.contains('='), "no padding: {token}");
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .expect("base64url"),
        )
        .expect("a URL")
    }

    #[test]
    fn a_token_is_a_presigned_get_caller_identity_url_bound_to_the_cluster() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let token = eks_token(&creds, "eu-west-1", "prod-a", t0).expect("a token");
        let url = decode(&token);
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        // The signature covers the cluster name: another cluster, another signature;
        // the same inputs, the same token.
        let other = decode(&eks_token(&creds, "eu-west-1", "prod-b", t0).unwrap());
        let sig = |u: &str| u.split("X-Amz-Signature=").nth(1).unwrap_or("").to_string();
        assert_ne!(sig(&url), sig(&other));
        assert_eq!(token, eks_token(&creds, "eu-west-1", "prod-a", t0).unwrap());
    }

    #[test]
    fn session_credentials_carry_their_token() {
        let creds = Credentials::new(
            "ASIAEXAMPLE",
            "secret",
            Some("sess/ion+".into()),
            None,
            "test",
        );
        let url = decode(&eks_token(&creds, "us-east-1", "c", SystemTime::now()).unwrap());
        assert!(url.contains("X-Amz-Security-Token=sess%2Fion%2B"), "{url}");
    }
}
