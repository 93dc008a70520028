"""gateway settings (prefix THREEGEN_GATEWAY_)."""

from __future__ import annotations

import dataclasses

from threegen.common.v1 import common_pb2
from threegen.config import setting
from threegen.runtime.settings import ServerSettings

# Route names are the proto's Family values: FAMILY_TRELLIS -> "trellis".
FAMILY_BY_NAME = {
    name.removeprefix("FAMILY_").lower(): value for name, value in common_pb2.Family.items() if value
}


@dataclasses.dataclass(frozen=True)
class GatewaySettings(ServerSettings):
    PREFIX = "THREEGEN_GATEWAY_"
    TITLE = "gateway"

    port: int = setting(50051, "gRPC port; 0 picks a free one.")
    max_concurrent: int = setting(8, "Pipelines run at once (backends queue their own GPU work).")
    max_queued: int = setting(64, "Pipelines waiting before RESOURCE_EXHAUSTED is returned.")
    imagegen_address: str = setting(
        "localhost:50052", "imagegen target; `dns:///imagegen:50052` spreads over a headless Service."
    )
    recon_address: str = setting(
        "localhost:50053", "recon target: its default family, and every family not in RECON_ROUTES."
    )
    recon_routes: tuple[str, ...] = setting(
        (),
        "Per-family recon targets, FAMILY=TARGET (e.g. trellis=dns:///recon-trellis:50053), for one "
        "recon image per family; requests for that family go there.",
    )
    render_address: str = setting("localhost:50054", "render target.")
    backend_retries: int = setting(4, "Attempts per backend call on UNAVAILABLE (with exponential backoff).")
    max_inline_image_bytes: int = setting(
        3 * 1024 * 1024, "Largest image sent inline in GenerateRequest.image."
    )
    max_image_pixels: int = setting(4096 * 4096, "Largest input image, in pixels.")
    data_dir: str = setting(
        "~/.local/share/threegen/gateway", "Job store: SQLite database, artifacts, uploads."
    )
    job_workers: int = setting(2, "Asynchronous jobs run at once.")
    max_queued_jobs: int = setting(100, "Queued jobs before SubmitJob answers RESOURCE_EXHAUSTED.")
    job_retention_hours: float = setting(72.0, "Finished jobs and their artifacts are deleted after this.")
    max_jobs_kept: int = setting(10000, "Most finished jobs kept; the oldest go first.")
    cache: bool = setting(True, "Serve a repeated request with an explicit seed from stored artifacts.")
    max_upload_bytes: int = setting(32 * 1024 * 1024, "Largest file accepted by UploadInput.")
    api_keys: tuple[str, ...] = setting((), "Accepted API keys (Authorization: Bearer KEY); empty: no auth.")
    allow_image_urls: bool = setting(
        False, "Fetch GenerateRequest.image_url (public http(s) addresses only)."
    )
    backend_tls_ca: str = setting("", "PEM CA bundle to verify the backends' TLS certificates.")
    backend_tls_cert: str = setting("", "PEM client certificate presented to the backends (mTLS).")
    backend_tls_key: str = setting("", "PEM private key of BACKEND_TLS_CERT.")
    backend_tls_server_name: str = setting(
        "", "Name expected in the backends' certificates, if not the host."
    )
    image_png_level: int = setting(
        0,
        "zlib level of the PNG the gateway asks imagegen for, 0..9, or -1 for imagegen's own default. "
        "The image goes straight on to recon, so stored (0): level 1 took 5.4 ms to write and 8.7 ms "
        "to read a 512 px image on an H100 host; the client's image.png is ~1.2x bigger (more for a "
        "cut-out, whose background compresses well).",
    )

    def routes(self) -> dict[str, str]:
        """recon_routes as {family name: target}."""
        return dict(route.split("=", 1) for route in self.recon_routes if "=" in route)

    def validate(self) -> None:
        super().validate()
        known = tuple(FAMILY_BY_NAME)
        bad = [r for r in self.recon_routes if "=" not in r or r.split("=", 1)[0] not in FAMILY_BY_NAME]
        self.require(not bad, "recon_routes", f"{bad}: each must be FAMILY=TARGET with FAMILY in {known}")
        self.require(
            1 <= self.backend_retries <= 5, "backend_retries", "must be 1..5 (gRPC caps attempts at 5)"
        )
        self.require(-1 <= self.image_png_level <= 9, "image_png_level", "must be -1..9")
        self.require(self.job_workers >= 1, "job_workers", "must be at least 1")
        self.require(self.max_queued_jobs >= 1, "max_queued_jobs", "must be at least 1")
        self.require(
            bool(self.backend_tls_cert) == bool(self.backend_tls_key),
            "backend_tls_cert",
            "BACKEND_TLS_CERT and BACKEND_TLS_KEY go together",
        )
