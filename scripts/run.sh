#!/usr/bin/env bash
# Set up (first time: builds pjsua2, a few minutes) and run the B2BUA with ./config.toml.
# Extra arguments go to `b2bua run`, e.g. scripts/run.sh -c other.toml -v
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/b2bua run "$@"
