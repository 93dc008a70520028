#!/usr/bin/env bash
# Regenerate the Go stubs in gen/go with buf and local plugins; --check fails if they are stale.
# Needs protoc-gen-go-grpc (Debian: protoc-gen-go-grpc) and Go to build protoc-gen-go from
# google.golang.org/protobuf (Debian: golang-google-protobuf-dev). The Rust crate in gen/rust
# generates its code at build time (prost-build); Python stubs: python -m threegen.protogen.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin
if [ ! -x .tools/bin/protoc-gen-go ]; then
  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-/tmp/gocache}" \
    go build -o .tools/bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
fi
bash scripts/buf.sh >/dev/null  # installs buf into .tools
buf="$PWD/.tools/node_modules/.bin/buf"
if [ "${1:-}" = "--check" ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  (cd protos && PATH="$PWD/../.tools/bin:$PATH" "$buf" generate --template buf.gen.yaml -o "$scratch/x")
  if ! diff -r "$scratch/gen/go/threegen" gen/go/threegen >/dev/null; then
    diff -r "$scratch/gen/go/threegen" gen/go/threegen | head -20 >&2
    echo "gen/go is stale: run bash scripts/gen_stubs.sh" >&2
    exit 1
  fi
  echo "gen/go stubs are up to date"
else
  (cd protos && PATH="$PWD/../.tools/bin:$PATH" "$buf" generate)
  echo "regenerated gen/go"
fi
