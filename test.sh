#!/usr/bin/env bash
# Runs om's whole test suite (unit and end-to-end) after setting up a fresh machine.
# Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --workspace --all-targets
# The Python package, built into a virtual environment for its pytest tests
# (tests/tests/python.rs runs them against a real cluster).
python3 -m venv target/pyvenv
target/pyvenv/bin/pip install -q pytest ./python
# End-to-end tests start real daemons and time-sensitive programs: two at a time on small machines.
cargo test --workspace -- --test-threads=2
