#!/usr/bin/env bash
# Build the generated Go stubs and the example client offline, in GOPATH mode against Debian's
# Go sources (golang-google-grpc-dev, golang-google-protobuf-dev). Prints the client's path.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${GO_CHECK_DIR:-$(mktemp -d)}
module="$scratch/src/github.com/threegen/threegen"
mkdir -p "$module"
rm -rf "$module/gen" "$module/examples"
cp -r gen "$module/gen"
cp -r examples "$module/examples"
export GO111MODULE=off GOPATH="$scratch:/usr/share/gocode" GOCACHE="$scratch/cache" GOFLAGS=
(cd "$module" && go vet ./gen/go/... >&2 && go build -o "$scratch/threegen-go-client" ./examples/go/generate)
echo "$scratch/threegen-go-client"
