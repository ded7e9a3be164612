# The two commands of the quick start, and the checks CI runs.
#   make demo   start the local stack, run the sample job with progress, print its summary, stop
#   make test   the whole test suite against DynamoDB Local and moto (installed and started here)

CARGO_TARGET_DIR ?= $(HOME)/.cache/batchplane/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/debug

.PHONY: demo test build lint bench bench-autoscaler infra lambda cdk taskhost-static

build:
	cargo build --workspace --bins

demo: build
	$(BIN)/batchplane demo

test: build
	bash scripts/test.sh

# The SAM template: cfn-lint and sam validate --lint (pinned, installed on first use).
infra:
	bash scripts/infra.sh

# Every function's bootstrap for arm64, as sam build makes them (cargo lambda + zig, pinned).
lambda:
	bash scripts/lambda-build.sh

# The CDK construct against the SAM template: its tests, cdk synth with cdk-nag, cfn-lint,
# and the comparison with the template transformed by aws-sam-translator. After `make lambda`.
cdk:
	bash scripts/cdk-check.sh

# The taskhost as static musl binaries for x86_64 and arm64, checked to need no shared
# library and to run from an empty directory (what a worker pod's init container copies).
taskhost-static:
	bash scripts/taskhost-static.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo build --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/batchplane bench

# The autoscaling policies in simulation (no AWS, seconds): writes bench-results/autoscaler.json.
bench-autoscaler: build
	$(BIN)/batchplane bench-autoscaler
