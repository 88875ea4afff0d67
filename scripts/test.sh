#!/usr/bin/env bash
# Run the whole test suite: installs libtorch (PyPI torch==2.11.0) into a cached virtual
# environment on first use, and k-diffusion (with what its sampling module imports) into
# .peers/site for the test that compares scoreflow's samplers with it, then `cargo test` over
# the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
py="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python3"
[ -x "$py" ] || py=python3
if scripts/peers-setup.sh "$py"; then
  export SCOREFLOW_PEERS_PYTHON="$py" SCOREFLOW_PEERS_SITE="$PWD/.peers/site"
else
  echo "scoreflow: could not install k-diffusion; the k-diffusion comparison test will be skipped" >&2
fi
cargo test --workspace --locked "$@"
