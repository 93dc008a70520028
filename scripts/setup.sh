#!/usr/bin/env bash
# Install threegen into ./.venv.   bash scripts/setup.sh [--dev]
#
# torch goes first and pinned: on a CPU-only machine this takes the local CPU wheel in
# seconds; elsewhere pip picks the matching build. Then the project with every service's
# extra (--dev adds the test and lint tools).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=all
[ "${1:-}" = "--dev" ] && extras=dev

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"
"${pip[@]}" -e ".[${extras}]"
# Hunyuan3D-2's package, without the web-app dependencies its metadata declares (pyproject.toml).
"${pip[@]}" --no-deps "hy3dgen==2.0.2"
# pyrender pins PyOpenGL 3.1.0, whose OSMesa binding lacks OSMesaCreateContextAttribs; 3.1.10
# renders offscreen with OSMesa and EGL. A single resolver run refuses both pins, hence a
# second step (pip prints a conflict notice, which is expected).
"${pip[@]}" "PyOpenGL==3.1.10" 2>&1 | grep -v -E "dependency resolver|pyrender 0.1.45 requires" || true

# System packages: Mesa's OSMesa for CPU rendering (GPU machines use EGL from the driver);
# with --dev also the Go and Rust toolchain pieces that check the generated stubs offline.
packages=(libosmesa6)
if [ "$extras" = dev ]; then
  packages+=(golang-go golang-google-protobuf-dev golang-google-grpc-dev protoc-gen-go-grpc protobuf-compiler
             librust-prost-dev librust-prost-build-dev librust-prost-types-dev)
fi
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "note: install these system packages (Debian/Ubuntu): ${missing[*]}" >&2
  fi
fi
echo "threegen installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
