#!/usr/bin/env bash
# Run the whole test suite: start DynamoDB Local and moto once on free ports (installing
# them if needed), run every test with cargo nextest against them, stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# The build the tests find their binaries in (the Makefile's and CI's).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/batchplane/target}

# The console's browser tests drive Debian's Chromium through its ChromeDriver.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium and chromium-driver (the console's browser tests)" >&2
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1) \
      || echo "[test] could not install chromium: the console's browser test will fail" >&2
  else
    echo "[test] the console's browser test needs chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2
  fi
fi
command -v chromium >/dev/null && chromium --version 2>/dev/null | head -1 >&2 || true

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
state=$(mktemp -d -t batchplane-emulators-XXXXXX)
ddb_port=$(port)
sqs_port=$(port)
trap 'bash scripts/emulators.sh stop "$state"' EXIT
bash scripts/emulators.sh start "$state" "$ddb_port" "$sqs_port"

export BATCHPLANE_TEST_DYNAMODB_URL=http://127.0.0.1:$ddb_port
export BATCHPLANE_TEST_SQS_URL=http://127.0.0.1:$sqs_port
BATCHPLANE_CLIENTS_PYTHON=$(bash scripts/emulators.sh clients-python)
export BATCHPLANE_CLIENTS_PYTHON
# CI selects the ci profile (no retries; the same limits and groups).
cargo nextest run --workspace --no-fail-fast ${CI:+--profile ci} "$@"
