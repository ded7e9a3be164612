# Sourced by the scripts that cross-build with cargo-lambda: puts cargo-lambda and its
# zig cross-linker, pinned from PyPI into a venv under ~/.cache (made once), on PATH.
CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.17.1
venv="$HOME/.cache/batchplane/venv-cargo-lambda${CARGO_LAMBDA_VERSION}-zig${ZIGLANG_VERSION}"
if [ ! -x "$venv/bin/cargo-lambda" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cargo-lambda==$CARGO_LAMBDA_VERSION" "ziglang==$ZIGLANG_VERSION"
fi
export PATH="$venv/bin:$PATH"
