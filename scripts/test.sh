#!/usr/bin/env bash
# The whole test suite: quality gates (ruff, mypy --strict) then pytest against real docker-registry,
# podman, skopeo and ostree processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check --no-cache engine registry store tests benchmarks
echo "== mypy --strict" && bash scripts/typecheck.sh
echo "== pytest"
exec pytest -p no:cacheprovider "$@"
