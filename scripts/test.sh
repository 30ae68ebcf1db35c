#!/usr/bin/env bash
# The test command of the README: installs test peers, builds the edge binary that the
# end-to-end tests start, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -p edge --bin edge
cargo test --workspace -- --test-threads=2
