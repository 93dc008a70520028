# threegen recon-hunyuan3d: the Hunyuan3D-2 family (shape + texture) as its own GPU image.
#   docker build -f deploy/docker/recon-hunyuan3d.Dockerfile -t threegen/recon-hunyuan3d:0.1.0 .
# Upstream's hy3dgen 2.0.2 from PyPI is installed without its dependencies (its metadata pulls
# a web UI stack the model code never imports); its custom_rasterizer CUDA extension is not on
# PyPI, and threegen supplies a torch rasterizer in its place. Weights are not baked in by
# default: mount a volume at /models (HF_HOME). --build-arg BAKE_WEIGHTS=true bakes the
# configured shape variant plus the delight and paint models into the image instead.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    U2NET_HOME=/models/rembg \
    PATH=/opt/venv/bin:$PATH \
    THREEGEN_RECON_PORT=50053 \
    THREEGEN_RECON_METRICS_PORT=9090 \
    THREEGEN_RECON_FAMILIES=hunyuan3d \
    THREEGEN_RECON_DEFAULT_FAMILY=hunyuan3d \
    THREEGEN_RECON_HUNYUAN3D_MEMORY_PROFILE=2

# OpenCV (headless) still needs libgl's neighbours for its imgproc module: libglib2.0-0.
# apt packages follow the pinned base image; security fixes arrive by rebuilding on it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 threegen \
    && mkdir -p /models && chown threegen /models

WORKDIR /app
COPY deploy/requirements/hunyuan3d.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && pip install "torch==2.11.0" "torchvision==0.26.0" \
    && pip install --no-deps --requirement /tmp/requirements.txt \
    && pip install --no-deps "hy3dgen==2.0.2"
COPY pyproject.toml README.md ./
COPY threegen ./threegen
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps .

ARG BAKE_WEIGHTS=false
RUN if [ "$BAKE_WEIGHTS" = "true" ]; then python -m threegen.fetch_weights recon && chown -R threegen /models; fi

USER 10001
EXPOSE 50053 9090
# Profile 2 keeps shape resident (4.6 GiB fp16) and swaps delight + paint (6.2 GiB) per request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=1200s --retries=3 \
    CMD ["python", "-m", "threegen.healthcheck", "--port", "50053"]
CMD ["python", "-m", "services.recon"]
