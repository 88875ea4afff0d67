#!/usr/bin/env bash
# Run the whole test suite: installs libtorch (PyPI torch==2.11.0) into a cached virtual
# environment on first use, then `cargo test` over the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --workspace --locked "$@"
