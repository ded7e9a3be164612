"""Point boto3 and the AWS CLI at a Batchplane deployment unchanged.

boto3 and the AWS CLI sign AWS Batch calls (SigV4) for the service `batch`. A
Batchplane deployment answers the same calls behind API Gateway, whose IAM authorizer
accepts only signatures for `execute-api`. This plugin signs every `batch` call sent
anywhere but AWS Batch's own endpoints (`batch.<region>.amazonaws.com`) for
`execute-api` instead; calls to AWS Batch itself are left alone.

boto3:

    import boto3, batchplane_botocore
    session = boto3.Session()
    batchplane_botocore.register(session)
    batch = session.client("batch", endpoint_url="https://<api>.execute-api.<region>.amazonaws.com")

The AWS CLI (v1; v2 also needs `cli_legacy_plugin_path` set to where this is installed):

    aws configure set plugins.batchplane batchplane_botocore
    aws batch list-jobs --job-queue jq --endpoint-url https://<api>.execute-api.<region>.amazonaws.com
"""

from urllib.parse import urlsplit

SIGNING_NAME = "execute-api"
EVENT = "before-sign.batch"


def is_aws_batch_endpoint(url):
    """Whether `url` is AWS Batch's own endpoint (any region, partition or FIPS form)."""
    host = (urlsplit(url).hostname or "").lower()
    first, _, rest = host.partition(".")
    return first in ("batch", "fips") and rest.endswith(("amazonaws.com", "amazonaws.com.cn", "api.aws"))


def sign_for_api_gateway(request, **_):
    """botocore's before-sign handler: sign for execute-api unless the call goes to AWS Batch."""
    if not is_aws_batch_endpoint(request.url):
        request.context.setdefault("signing", {})["signing_name"] = SIGNING_NAME


def register(session):
    """Register on a boto3 or botocore session: its clients created from now on sign so."""
    botocore_session = getattr(session, "_session", session)
    botocore_session.register(EVENT, sign_for_api_gateway, unique_id="batchplane-execute-api")
    return session


def awscli_initialize(cli):
    """The AWS CLI's plugin entry point (`[plugins] batchplane = batchplane_botocore`)."""
    cli.register(EVENT, sign_for_api_gateway, unique_id="batchplane-execute-api")
