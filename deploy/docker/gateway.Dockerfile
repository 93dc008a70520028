# threegen gateway: the public endpoint; no GPU. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t threegen/gateway:0.1.0 .
# Jobs and artifacts live under /data: mount a volume there so they survive restarts.
FROM python:3.12.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    THREEGEN_GATEWAY_PORT=50051 \
    THREEGEN_GATEWAY_METRICS_PORT=9090 \
    THREEGEN_GATEWAY_DATA_DIR=/data

RUN useradd --create-home --uid 10001 threegen && mkdir -p /data && chown threegen /data
WORKDIR /app
COPY deploy/requirements/gateway.txt /tmp/requirements.txt
RUN pip install --no-deps --requirement /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY threegen ./threegen
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps .

USER 10001
VOLUME ["/data"]
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "threegen.healthcheck", "--port", "50051"]
CMD ["python", "-m", "gateway"]
