#!/usr/bin/env bash
# The pinned venv with cfn-lint and the SAM CLI (and its aws-sam-translator), made once
# under ~/.cache; prints its path. No AWS account is needed for anything in it.
set -euo pipefail
CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
venv="$HOME/.cache/batchplane/venv-infra-cfnlint${CFN_LINT_VERSION}-sam${SAM_CLI_VERSION}"
if [ ! -x "$venv/bin/sam" ] || [ ! -x "$venv/bin/cfn-lint" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION" >&2
fi
echo "$venv"
