#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test
# (unit, integration, doc) of every crate with every feature. Starts Redis
# and NATS first when they are not running (installing them when missing),
# since the broker transports are tested against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ -x scripts/brokers.sh ]; then
    step "brokers (Redis on 127.0.0.1:6379, NATS on 127.0.0.1:4222)"
    scripts/brokers.sh
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test --workspace --all-features"
cargo test --workspace --all-features

step "deploy/local-topology.sh (three workers, one killed halfway, no call lost)"
bash deploy/local-topology.sh
