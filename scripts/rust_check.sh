#!/usr/bin/env bash
# Build and test the Rust message crate offline against Debian's vendored crates
# (librust-prost-dev, librust-prost-build-dev). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../gen/rust"
# One target directory per checkout (keyed by its path), so clones never share build outputs.
key=$(pwd | sha256sum | cut -c1-12)
cargo test --offline --quiet \
  --config 'source.crates-io.replace-with="debian"' \
  --config 'source.debian.directory="/usr/share/cargo/registry"' \
  --target-dir "${CARGO_TARGET_DIR:-/tmp/threegen-rust-target-$key}" "$@"
