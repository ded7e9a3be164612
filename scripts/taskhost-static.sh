#!/usr/bin/env bash
# Build the taskhost as a static (musl) binary for x86_64 and arm64, the one a worker
# pod's init container copies into the task's image, and check that each needs no
# shared library (no ELF interpreter, no DT_NEEDED entry) and runs: in an empty root
# file system (`taskhost install` copies itself, the copy prints its help), natively
# for x86_64 and under qemu-user for arm64 where qemu-aarch64 is installed (CI installs
# Debian's qemu-user-static). cargo-lambda's zig cross-linker, pinned, links both.
#   scripts/taskhost-static.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${CARGO_TARGET_DIR:-target}/taskhost-static}
source scripts/cargo-lambda-env.sh
mkdir -p "$out"
for arch in x86_64 aarch64; do
  target="$arch-unknown-linux-musl"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  # cargo-lambda builds any binary with zig as the linker; --disable-optimizations
  # keeps the workspace's own release profile (no LTO pass on a 2-core machine).
  cargo lambda build --release --disable-optimizations --target "$target" \
    -p batchplane-taskhost --bin taskhost --lambda-dir "$out/lambda-$arch" >/dev/null
  # cargo-lambda moves the binary to the lambda directory as `bootstrap`.
  bin="$out/lambda-$arch/taskhost/bootstrap"
  # Named as Docker names platforms, for infra/taskhost.Dockerfile's TARGETARCH.
  case "$arch" in x86_64) docker_arch=amd64 ;; aarch64) docker_arch=arm64 ;; esac
  cp "$bin" "$out/taskhost-$docker_arch"
  bin="$out/taskhost-$docker_arch"
  if readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "$bin asks for an ELF interpreter: it is not static" >&2; exit 1
  fi
  if readelf -dW "$bin" | grep -q '(NEEDED)'; then
    echo "$bin needs shared libraries:" >&2; readelf -dW "$bin" | grep NEEDED >&2; exit 1
  fi
  run=()
  if [ "$arch" != "$(uname -m)" ]; then
    if command -v qemu-aarch64-static >/dev/null; then run=(qemu-aarch64-static);
    elif command -v qemu-aarch64 >/dev/null; then run=(qemu-aarch64);
    else echo "$arch: static, not run (no qemu-aarch64 here)"; continue; fi
  fi
  # An empty directory stands in for a distroless image: nothing but the binary.
  root=$(mktemp -d)
  "${run[@]}" "$bin" install "$root/taskhost" >/dev/null
  env -i "${run[@]}" "$root/taskhost" --help | grep -q "Run Batchplane tasks" \
    || { echo "$arch: the installed taskhost does not run" >&2; exit 1; }
  rm -rf "$root"
  printf '%-8s %s (%s bytes, static, runs)\n' "$arch" "$bin" "$(stat -c %s "$bin")"
done
