# threegen recon-<family>: one recon family as its own GPU image, for the families that run on
# threegen's own torch networks and need only the recon extra (no spconv, flash-attn, kaolin,
# pytorch3d, nvdiffrast or fVDB to build): TRELLIS, SAM 3D Objects and XCube. Hunyuan3D-2 has its
# own file.
#   docker build -f deploy/docker/recon-family.Dockerfile --build-arg FAMILY=trellis -t threegen/recon-trellis:0.1.0 .
#   docker build -f deploy/docker/recon-family.Dockerfile --build-arg FAMILY=sam3d -t threegen/recon-sam3d:0.1.0 .
#   docker build -f deploy/docker/recon-family.Dockerfile --build-arg FAMILY=xcube --build-arg REQUIREMENTS=xcube \
#     -t threegen/recon-xcube:0.1.0 .
# Weights are not baked in by default: mount a volume at /models (HF_HOME for the Hugging Face
# repositories, TORCH_HOME for DINOv2). --build-arg BAKE_WEIGHTS=true bakes them into the image
# instead (SAM 3D's repository is gated: the build then needs HF_TOKEN as a secret).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG FAMILY=trellis
# The locked dependency set: recon, or the family's own extra where it has more (xcube).
ARG REQUIREMENTS=recon

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
    THREEGEN_RECON_FAMILIES=${FAMILY} \
    THREEGEN_RECON_DEFAULT_FAMILY=${FAMILY}

# apt packages follow the pinned base image; security fixes arrive by rebuilding on it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 threegen \
    && mkdir -p /models && chown threegen /models

WORKDIR /app
COPY deploy/requirements/${REQUIREMENTS}.txt /tmp/requirements.txt
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
# Loading TRELLIS image-large + text-xlarge + DINOv2 + CLIP (7.3 GiB fp16), or SAM 3D's 3.2 B
# parameters + MoGe, from a cold volume takes minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-m", "threegen.healthcheck", "--port", "50053"]
CMD ["python", "-m", "services.recon"]
