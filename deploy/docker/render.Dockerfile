# threegen render: one GPU image per service. Build from the repository root:
#   docker build -f deploy/docker/render.Dockerfile -t threegen/render:0.1.0 .
# render has no model weights. EGL comes from the NVIDIA driver (the container toolkit mounts
# it; NVIDIA_DRIVER_CAPABILITIES must include graphics); OSMesa is the fallback without a GPU.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    PATH=/opt/venv/bin:$PATH \
    THREEGEN_RENDER_PORT=50054 \
    THREEGEN_RENDER_METRICS_PORT=9090

# apt packages follow the pinned base image; security fixes arrive by rebuilding on it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libegl1 libgl1 libgles2 libglvnd0 libosmesa6 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 threegen \
    && mkdir -p /models && chown threegen /models

WORKDIR /app
COPY deploy/requirements/render.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
    && pip install "torch==2.11.0" \
    && pip install --no-deps --requirement /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY threegen ./threegen
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps .

USER 10001
EXPOSE 50054 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-m", "threegen.healthcheck", "--port", "50054"]
CMD ["python", "-m", "services.render"]
