#!/usr/bin/env bash
# Check the SAM template: cfn-lint and `sam validate --lint`, from a pinned venv (made
# once under ~/.cache). No AWS account is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/infra-venv.sh)
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0
for t in infra/template.yaml; do
  echo "cfn-lint $t"; "$venv/bin/cfn-lint" "$t"
  echo "sam validate --lint $t"; "$venv/bin/sam" validate --lint -t "$t"
done
