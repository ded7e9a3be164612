#!/usr/bin/env bash
# Build every Lambda function's bootstrap for arm64 (provided.al2023) with cargo lambda,
# as `sam build` does, and check each is an aarch64 executable. cargo-lambda and its zig
# cross-linker come pinned from PyPI into a venv under ~/.cache (made once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo-lambda-env.sh
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
  || rustup target add aarch64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
lambda_dir="$target_dir/lambda"
functions=(api fanout placement autoscaler publisher trigger)
packages=()
for f in "${functions[@]}"; do packages+=(-p "batchplane-fn-$f"); done
cargo lambda build --release --arm64 --lambda-dir "$lambda_dir" "${packages[@]}"
for f in "${functions[@]}"; do
  bootstrap="$lambda_dir/$f/bootstrap"
  [ -x "$bootstrap" ] || { echo "missing $bootstrap" >&2; exit 1; }
  # An ELF file for machine 183 (EM_AARCH64): bytes 18-19, little-endian.
  machine=$(od -An -t u2 -j 18 -N 2 "$bootstrap" | tr -d ' ')
  [ "$machine" = 183 ] || { echo "$bootstrap is not an aarch64 executable (ELF machine $machine)" >&2; exit 1; }
  printf '%-12s %s (%s bytes, aarch64)\n' "$f" "$bootstrap" "$(stat -c %s "$bootstrap")"
done
