#!/usr/bin/env bash
# mypy --strict over the product as it is installed (tether, tether.engine, tether.registry, tether.store: see
# pyproject.toml's package-dir), the tests and the benchmarks. mypy cannot follow a package-dir mapping, so it
# reads the product through a tree of symlinks that mirrors the installed layout (.typecheck/, rebuilt each run).
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.typecheck/tether
rm -rf .typecheck
mkdir -p "$tree"
for f in engine/api/*.py engine/api/py.typed; do ln -s "../../$f" "$tree/"; done
for pkg in engine registry store; do ln -s "../../$pkg" "$tree/$pkg"; done
MYPYPATH=.typecheck exec "${MYPY:-mypy}" --strict --exclude '^\.typecheck/tether/engine/api/' -p tether -p tests -p benchmarks "$@"
