#!/usr/bin/env bash
# Runs om's whole test suite (unit and end-to-end) after setting up a fresh machine.
# Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --workspace --all-targets
# End-to-end tests start real daemons and time-sensitive programs: two at a time on small machines.
cargo test --workspace -- --test-threads=2
