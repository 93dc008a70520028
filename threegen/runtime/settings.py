"""Settings every service has, under its own prefix."""

from __future__ import annotations

import dataclasses

from threegen.config import Settings, setting


@dataclasses.dataclass(frozen=True)
class ServerSettings(Settings):
    host: str = setting("0.0.0.0", "Address the gRPC server binds.")
    port: int = setting(50051, "gRPC port; 0 picks a free one.")
    metrics_port: int = setting(0, "Prometheus /metrics port; 0 disables the endpoint.")
    max_concurrent: int = setting(
        1, "Requests worked on at once (one per GPU is right for model services).", fallback="MAX_CONCURRENT"
    )
    max_queued: int = setting(
        16, "Requests waiting for a slot before RESOURCE_EXHAUSTED is returned.", fallback="MAX_QUEUE_SIZE"
    )
    grace_seconds: float = setting(30.0, "On SIGTERM, how long in-flight streams may finish.")
    max_message_bytes: int = setting(
        4 * 1024 * 1024, "Largest gRPC message accepted; files travel as 256 KiB chunks."
    )
    log_level: str = setting("INFO", "Log level.", fallback="LOG_LEVEL")
    log_format: str = setting(
        "json", "`json` (one object a line, with request ids) or `plain`.", fallback="LOG_FORMAT"
    )
    device: str = setting("auto", "Torch device: `auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`.")
    tls_cert: str = setting("", "PEM certificate chain: serve TLS instead of plaintext.")
    tls_key: str = setting("", "PEM private key of TLS_CERT.")
    tls_client_ca: str = setting("", "PEM CA bundle: require client certificates signed by it (mTLS).")

    def validate(self) -> None:
        self.require(0 <= self.port <= 65535, "port", "must be 0..65535")
        self.require(0 <= self.metrics_port <= 65535, "metrics_port", "must be 0..65535")
        self.require(self.max_concurrent >= 1, "max_concurrent", "must be at least 1")
        self.require(self.max_queued >= 0, "max_queued", "must be 0 or more")
        self.require(self.grace_seconds >= 0, "grace_seconds", "must be 0 or more")
        self.require(self.max_message_bytes >= 64 * 1024, "max_message_bytes", "must be at least 65536")
        self.require(self.log_format in ("json", "plain"), "log_format", "must be json or plain")
        self.require(
            bool(self.tls_cert) == bool(self.tls_key), "tls_cert", "TLS_CERT and TLS_KEY go together"
        )
        self.require(
            not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca", "mTLS needs TLS_CERT and TLS_KEY"
        )
