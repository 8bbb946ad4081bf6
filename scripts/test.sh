#!/usr/bin/env bash
# Runs Tollgate's whole test suite: installs what is missing (scripts/setup.sh), builds once,
# runs every unit and end-to-end test (real Envoy, Redis, Redis Cluster, OIDC provider), then
# checks formatting and lints.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh FILTER     only tests whose name contains FILTER (no lint step)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh --with prometheus,helm

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One build shared by every test binary; the binaries themselves are used by the CLI tests.
cargo build --workspace --all-targets --locked

if (($#)); then
  cargo test --workspace --locked --no-fail-fast -- "$@"
  exit 0
fi

cargo test --workspace --locked --no-fail-fast
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "scripts/test.sh: all tests, formatting and lints passed"
