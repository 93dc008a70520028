#!/usr/bin/env bash
# Prepare what a lent GPU machine (no network, see /work/.library/device) lacks, to be named in
# `carry` and installed there by `. bench/gpu_env.sh`:
#   .whl/    wheels for the services and rendering (imagegen, hot path, render benches)
#   .whl3d/  wheels the recon families add (TRELLIS, SAM 3D, XCube benches)
#   .gl/     the GL loader packages pyrender needs for EGL on the NVIDIA driver
# Run once here, on a networked machine, from anywhere:   bash scripts/gpu_carry.sh
# The machine's image already has torch, transformers, accelerate, peft, numpy, scipy, pillow,
# imageio, networkx, scikit-image, safetensors, rich, pyyaml and huggingface_hub (1.x, which the
# 2.x of our venv would need httpx2 for); versions below are those the tests run with.
set -euo pipefail
cd "$(dirname "$0")/.."

services=(
  grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.1
  googleapis-common-protos==1.76.0 protobuf==7.36.2 prometheus-client==0.26.0
  diffusers==0.42.1 importlib_metadata==8.7.0
  trimesh==5.2.0 pyrender==0.1.45 PyOpenGL==3.1.10 freetype-py==2.5.1 pyglet==2.1.19 av==18.1.0
  fast-simplification==0.2.0 omegaconf==2.4.0
)
families=(xatlas==0.0.11)

download() {  # folder, requirement...
  local folder=$1
  shift
  mkdir -p "$folder"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$folder" "$@"
}

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for folder in /.whl/ /.whl3d/ /.gl/; do
  grep -qxF "$folder" "$exclude" 2>/dev/null || echo "$folder" >>"$exclude"
done

download .whl "${services[@]}"
download .whl3d "${families[@]}"

mkdir -p .gl /tmp/amd64/partial
apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt[@]}" update -qq
(cd .gl && apt-get "${apt[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

du -sh .whl .whl3d .gl
