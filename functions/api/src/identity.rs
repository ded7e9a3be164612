//! Who is calling. In AWS, the IAM principal API Gateway's IAM authorizer checked, read
//! from the request context lambda_http puts in the request's extensions; a header or
//! body the caller wrote never counts. On the local stack (no IAM), the access key id
//! of the SigV4 `Authorization` header, taken on trust. Either way, a request without
//! one is `anonymous`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use batchplane::api::Service;
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

/// The request's principal, read where `source` says.
pub fn principal(parts: &Parts, source: IdentitySource) -> Principal {
    let found = match source {
        IdentitySource::Iam => iam_principal(parts),
        IdentitySource::AccessKeyId => signing_key_id(&parts.headers).map(Principal::named),
    };
    found.unwrap_or_else(Principal::anonymous)
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
        let p = principal(parts, svc.identity);
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
        assert_eq!(
            principal(&signed, IdentitySource::AccessKeyId).id,
            "AKIDEXAMPLE"
        );
        // In AWS only API Gateway's context counts: a header is not an identity.
        assert!(principal(&signed, IdentitySource::Iam).is_anonymous());
        assert!(principal(&parts(None), IdentitySource::AccessKeyId).is_anonymous());
        assert!(principal(&parts(Some("Bearer x")), IdentitySource::AccessKeyId).is_anonymous());
    }
}
