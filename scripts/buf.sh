#!/usr/bin/env bash
# buf lint (STANDARD + COMMENTS), and buf breaking against the previous commit once it has protos.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.75.0
buf=.tools/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version)" != "$version" ]; then
  if ! command -v npm >/dev/null; then
    if [ -n "${THREEGEN_REQUIRE_BUF:-}" ]; then echo "npm is needed for buf" >&2; exit 1; fi
    echo "npm not found: skipping buf (set THREEGEN_REQUIRE_BUF=1 to make this an error)" >&2
    exit 0
  fi
  npm install --silent --no-save --no-audit --no-fund --prefix .tools "@bufbuild/buf@${version}" >/dev/null
fi
(cd protos && "../$buf" lint)
echo "buf lint: ok"
against="${BUF_BREAKING_AGAINST:-HEAD~1}"
if git rev-parse --verify --quiet "${against}:protos/buf.yaml" >/dev/null; then
  "$buf" breaking protos --against ".git#ref=${against},subdir=protos"
  echo "buf breaking against ${against}: ok"
else
  echo "buf breaking: ${against} has no protos yet (or is not in this clone); skipped"
fi
