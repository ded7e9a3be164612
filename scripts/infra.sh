#!/usr/bin/env bash
# Check the SAM template: cfn-lint and `sam validate --lint`, from a pinned venv (made
# once under ~/.cache). No AWS account is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
venv="$HOME/.cache/batchplane/venv-infra-cfnlint${CFN_LINT_VERSION}-sam${SAM_CLI_VERSION}"
if [ ! -x "$venv/bin/sam" ] || [ ! -x "$venv/bin/cfn-lint" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION"
fi
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0
for t in infra/template.yaml; do
  echo "cfn-lint $t"; "$venv/bin/cfn-lint" "$t"
  echo "sam validate --lint $t"; "$venv/bin/sam" validate --lint -t "$t"
done
