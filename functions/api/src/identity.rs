//! Who is calling. In AWS, the IAM principal API Gateway's IAM authorizer checked, read
//! from the request context lambda_http puts in the request's extensions; a header or
//! body the caller wrote never counts. On the local stack (no IAM), the access key id
//! of the SigV4 `Authorization` header, taken on trust. Either way, a request without
//! one is `anonymous`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use batchplane::api::{ApiError, ErrorKind, Service};
use batchplane::config::IdentitySource;
use batchplane::domain::access::{Access, Principal};
use std::sync::Arc;

/// The access key of a SigV4 `Authorization` header (`Credential=<key>/<scope>`).
pub fn signing_key_id(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let key = cred.split('/').next()?.trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// The IAM principal of an API Gateway request context (HTTP API or REST API).
fn iam_principal(parts: &Parts) -> Option<Principal> {
    use lambda_http::request::RequestContext;
    let arn = match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => {
            ctx.authorizer.as_ref()?.iam.as_ref()?.user_arn.clone()
        }
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.user_arn.clone(),
        // Any other front (a function URL, an ALB) authenticates no IAM principal.
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    (!arn.is_empty()).then(|| Principal::from_iam_arn(&arn))
}

/// The service a SigV4 `Authorization` header is scoped to
/// (`Credential=<key>/<date>/<region>/<service>/aws4_request`).
pub fn signing_service(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let scope = cred.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(str::to_string)
}

/// The service API Gateway's IAM authorizer accepts signatures for.
pub const API_GATEWAY_SERVICE: &str = "execute-api";

/// The request's principal, read where `source` says; a request API Gateway would
/// refuse (signed for another service) is refused with its message.
pub fn principal(parts: &Parts, source: IdentitySource) -> Result<Principal, ApiError> {
    let found = match source {
        IdentitySource::Iam => iam_principal(parts),
        IdentitySource::AccessKeyId => signing_key_id(&parts.headers).map(Principal::named),
        IdentitySource::ApiGatewayKeyId => {
            match signing_service(&parts.headers) {
                Some(service) if service != API_GATEWAY_SERVICE => {
                    return Err(ApiError::new(
                        ErrorKind::Forbidden,
                        "InvalidSignatureException",
                        format!("Credential should be scoped to correct service: '{API_GATEWAY_SERVICE}'. (It was signed for '{service}'.)"),
                        serde_json::json!({"signed_for": service}),
                    ))
                }
                _ => {}
            }
            signing_key_id(&parts.headers).map(Principal::named)
        }
    };
    Ok(found.unwrap_or_else(Principal::anonymous))
}

/// The caller's access, resolved once per request; a failure to read the grants is the
/// request's error.
pub struct Caller(pub Access);

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = crate::Error;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let p = principal(parts, svc.identity).map_err(crate::Error)?;
        Ok(Caller(svc.access_for(p).await.map_err(crate::Error)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>) -> Parts {
        let mut b = axum::http::Request::get("/v1/jobs");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(())
            .unwrap_or_else(|e| panic!("building a request: {e}"))
            .into_parts()
            .0
    }

    #[test]
    fn the_local_principal_is_the_signing_key_and_iam_ignores_it() {
        let signed = parts(Some(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/batch/aws4_request, SignedHeaders=host, Signature=abc",
        ));
        let of = |p: &Parts, source| {
            principal(p, source).unwrap_or_else(|e| panic!("{source:?}: {}", e.message))
        };
        assert_eq!(of(&signed, IdentitySource::AccessKeyId).id, "AKIDEXAMPLE");
        // In AWS only API Gateway's context counts: a header is not an identity.
        assert!(of(&signed, IdentitySource::Iam).is_anonymous());
        assert!(of(&parts(None), IdentitySource::AccessKeyId).is_anonymous());
        assert!(of(&parts(Some("Bearer x")), IdentitySource::AccessKeyId).is_anonymous());
    }

    #[test]
    fn as_api_gateway_only_a_signature_for_execute_api_is_taken() {
        let signed_for = |service: &str| {
            parts(Some(&format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=abc"
            )))
        };
        let gateway = IdentitySource::ApiGatewayKeyId;
        match principal(&signed_for("batch"), gateway) {
            Err(e) => assert!(
                e.message.contains("'execute-api'") && e.message.contains("'batch'"),
                "{}",
                e.message
            ),
            Ok(p) => panic!("a signature for batch was taken as {}", p.id),
        }
        let ok = principal(&signed_for("execute-api"), gateway)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ok.id, "AKIDEXAMPLE");
        assert!(principal(&parts(None), gateway).is_ok_and(|p| p.is_anonymous()));
    }
}
