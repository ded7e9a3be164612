#!/usr/bin/env bash
# Check the CDK construct (infra/cdk) against the SAM template, with no AWS account:
# its unit tests; then, for each parameter file in infra/cdk/test/*-parameters.json,
# `cdk synth` of the example app (cdk-nag's AwsSolutions rules fail it on any finding not
# suppressed with a reason), cfn-lint of what it synthesized, and the comparison with
# infra/template.yaml transformed by aws-sam-translator (scripts/cdk_compare.py), which
# names every difference. The functions' bootstraps come prebuilt from `make lambda`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/batchplane/target}
lambda_dir=${BATCHPLANE_LAMBDA_DIR:-$CARGO_TARGET_DIR/lambda}
if [ ! -x "$lambda_dir/api/bootstrap" ]; then
  echo "no bootstraps in $lambda_dir: run \`make lambda\` first (or set BATCHPLANE_LAMBDA_DIR)" >&2
  exit 1
fi
venv=$(bash scripts/infra-venv.sh)
export AWS_DEFAULT_REGION=us-east-1 CDK_DISABLE_VERSION_CHECK=1
cd infra/cdk
# The lockfile pins every package; npm's cache under ~/.npm keeps a rerun offline.
npm ci --no-audit --no-fund --loglevel=error
echo "== construct tests"
npm test >"${TMPDIR:-/tmp}/batchplane-cdk-test.log" 2>&1 || { cat "${TMPDIR:-/tmp}/batchplane-cdk-test.log"; exit 1; }
grep -E '^# (tests|pass|fail)' "${TMPDIR:-/tmp}/batchplane-cdk-test.log"
out=$(mktemp -d -t batchplane-cdk-XXXXXX)
trap 'rm -rf "$out"' EXIT
for parameters in test/*-parameters.json; do
  config=$(basename "$parameters" -parameters.json)
  echo "== cdk synth ($config parameters, cdk-nag AwsSolutions)"
  if ! BATCHPLANE_LAMBDA_DIR=$lambda_dir npx cdk synth --quiet --no-notices \
      -c parametersFile="$parameters" -o "$out/$config" >"$out/synth.log" 2>&1; then
    cat "$out/synth.log"; echo "cdk synth failed ($config)" >&2; exit 1
  fi
  grep -v 'feature flags are not configured' "$out/synth.log" || true
  template="$out/$config/Batchplane.template.json"
  # W3005: CDK's Function always depends on its role, which its Role GetAtt implies too.
  echo "== cfn-lint ($config)"; "$venv/bin/cfn-lint" --ignore-checks W3005 -- "$template"
  echo "== compare with infra/template.yaml ($config)"
  "$venv/bin/python" "$root/scripts/cdk_compare.py" "$root/infra/template.yaml" "$template" "$parameters"
done
# The comparison can fail: one grant taken from the template must be named.
echo "== the comparison names a difference"
mkdir -p "$out/mutated" && cp -r "$root/infra/statemachines" "$out/mutated/"
sed 's/Action: \[events:PutEvents\]/Action: [events:PutEvents, events:PutRule]/' \
  "$root/infra/template.yaml" >"$out/mutated/template.yaml"
if "$venv/bin/python" "$root/scripts/cdk_compare.py" "$out/mutated/template.yaml" \
    "$out/everything/Batchplane.template.json" test/everything-parameters.json >"$out/mutated.log"; then
  cat "$out/mutated.log"; echo "the comparison missed a grant only the SAM template has" >&2; exit 1
fi
grep -F 'role:lambda:batchplane-publisher.Grants: only in SAM: Allow events:PutRule' "$out/mutated.log"
