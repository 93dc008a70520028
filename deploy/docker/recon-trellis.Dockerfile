# threegen recon-trellis: the TRELLIS family (image-large and text-xlarge) as its own GPU image.
#   docker build -f deploy/docker/recon-trellis.Dockerfile -t threegen/recon-trellis:0.1.0 .
# TRELLIS runs on threegen's own torch networks (no spconv, flash-attn or kaolin to build), so
# the image needs only the recon extra. Weights are not baked in by default: mount a volume at
# /models (HF_HOME for the Hugging Face repositories, TORCH_HOME for DINOv2).
# --build-arg BAKE_WEIGHTS=true bakes them into the image instead.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch \
    U2NET_HOME=/models/rembg \
    PATH=/opt/venv/bin:$PATH \
    THREEGEN_RECON_PORT=50053 \
    THREEGEN_RECON_METRICS_PORT=9090 \
    THREEGEN_RECON_FAMILIES=trellis \
    THREEGEN_RECON_DEFAULT_FAMILY=trellis

# apt packages follow the pinned base image; security fixes arrive by rebuilding on it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 threegen \
    && mkdir -p /models && chown threegen /models

WORKDIR /app
COPY deploy/requirements/recon.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && pip install "torch==2.11.0" \
    && pip install --no-deps --requirement /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY threegen ./threegen
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps .

ARG BAKE_WEIGHTS=false
RUN if [ "$BAKE_WEIGHTS" = "true" ]; then python -m threegen.fetch_weights recon && chown -R threegen /models; fi

USER 10001
EXPOSE 50053 9090
# Loading image-large + text-xlarge + DINOv2 + CLIP (7.3 GiB fp16) from a cold volume takes minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-m", "threegen.healthcheck", "--port", "50053"]
CMD ["python", "-m", "services.recon"]
