#!/usr/bin/env bash
# Build the flows' image for a Docker work pool from this checkout, on the local Docker engine
# (no push; tag it for your registry and push it yourself if the workers run elsewhere).
#   bash infra/flows-image/build.sh TAG [BASE]
# BASE is any image with Python 3.11 (default python:3.11-slim-bookworm). The dependencies are
# built here as wheels first (pip wheel, from your index), so `docker build` needs no network.
# EXTRA_WHEELS: more requirements for an interpreter older than this one (environment markers
# are read here: Debian 12's Python 3.11.2 needs async-timeout, 3.11.3 and later do not).
set -euo pipefail
tag=${1:?usage: build.sh TAG [BASE]}
base=${2:-python:3.11-slim-bookworm}
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# shellcheck disable=SC2086
"$python" -m pip wheel --quiet --wheel-dir "$ctx/wheels" "$root" pip ${EXTRA_WHEELS:-}
mkdir "$ctx/src"
cp -r "$root"/pyproject.toml "$root"/prefect.yaml "$root"/flows "$root"/blocks \
    "$root"/deployments "$ctx/src/"
find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} +
cp "$root/infra/flows-image/Dockerfile" "$ctx/"
DOCKER_BUILDKIT=0 docker build --quiet --network none --tag "$tag" --build-arg BASE="$base" "$ctx"
