#!/usr/bin/env bash
# The domain crate stays pure: no AWS SDK, no async runtime, no HTTP among its
# dependencies (direct or transitive), so its tests build in seconds and nothing in it
# can do I/O. Fails naming the crates that break the rule.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(cargo tree -p batchplane-domain -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad=$(grep -E '^(aws-|aws_|tokio|hyper|http|reqwest|lambda_|axum|tower|kube|futures)' <<<"$deps" || true)
if [ -n "$bad" ]; then
  echo "batchplane-domain must not depend on AWS, async or HTTP crates; it pulls in:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "batchplane-domain: $(wc -l <<<"$deps") crates, none of them AWS, async or HTTP"
