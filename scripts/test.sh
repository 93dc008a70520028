#!/usr/bin/env bash
# Install (with dev tools), lint, check the contracts, run the tests.   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1

echo "== ruff"
ruff check .
ruff format --check .

echo "== stubs are generated from the protos"
python -m threegen.protogen --check

echo "== buf lint / breaking"
bash scripts/buf.sh

echo "== Dockerfiles and Kubernetes manifests"
bash scripts/deploy_check.sh

echo "== Go stubs (generated, current, compiling)"
if command -v go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then
  bash scripts/gen_stubs.sh --check
  bash scripts/go_check.sh >/dev/null && echo "gen/go and examples/go build"
elif [ -n "${THREEGEN_REQUIRE_BUF:-}" ]; then
  echo "Go toolchain missing" >&2; exit 1
else
  echo "Go toolchain missing: skipped" >&2
fi

echo "== tests"
python -m pytest "$@"
