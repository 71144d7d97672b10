#!/usr/bin/env bash
# Update requirements.lock from pyproject.toml (dependencies + the dev extra), every package
# pinned with its hashes. Run after changing a dependency in pyproject.toml, or to take newer
# releases (add --upgrade, or --upgrade-package NAME), then rerun scripts/bootstrap.sh and the
# tests, and commit the lock with the change.
set -euo pipefail
REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${REPO_ROOT}/.venv"
[[ -x "${VENV}/bin/pip-compile" ]] || "${VENV}/bin/python" -m pip install -q pip-tools
cd "${REPO_ROOT}"
# Index and find-links options stay out of the file: they belong to the machine, not the lock.
"${VENV}/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --extra dev --strip-extras \
    --no-emit-index-url --no-emit-find-links --output-file requirements.lock "$@" pyproject.toml
