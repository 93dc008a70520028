"""Shared fixtures: tiny checkpoints written once per session, and a full in-process stack."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import ServerThread, serving

LOCAL = {"host": "127.0.0.1", "port": 0, "log_format": "plain"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from threegen.tiny import ensure_tiny_weights

    configured = os.environ.get("THREEGEN_TEST_TINY_DIR")
    return ensure_tiny_weights(Path(configured) if configured else tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_families(tiny: dict[str, Path]) -> dict[str, Path]:
    """The tiny checkpoints of the recon families beyond TripoSR, beside the stack's ones."""
    from threegen.tiny import ensure_tiny_weights

    names = [name for name, package in FAMILY_PACKAGES.items() if importlib.util.find_spec(package)]
    return {**tiny, **ensure_tiny_weights(tiny["triposr"].parent, tuple(names))}


# family -> a package it needs
FAMILY_PACKAGES = {"hunyuan3d": "hy3dgen", "trellis": "xatlas", "sam3d": "xatlas", "xcube": "omegaconf"}


def imagegen_service(tiny: dict[str, Path], **overrides):
    from services.imagegen.server import build
    from services.imagegen.settings import ImageGenSettings

    overrides.setdefault("sd_turbo_model", str(tiny["sd-turbo"]))
    overrides.setdefault("sdxl_turbo_model", str(tiny["sdxl-turbo"]))
    overrides.setdefault("clip_model", str(tiny["clip"]))
    overrides.setdefault("rembg_model", str(tiny["rembg"] / "u2net-tiny.onnx"))
    return build(ImageGenSettings.from_env({}, **LOCAL, **overrides))


def recon_service(tiny: dict[str, Path], **overrides):
    from services.recon.server import build
    from services.recon.settings import ReconSettings

    overrides.setdefault("triposr_model", str(tiny["triposr"]))
    overrides.setdefault("rembg_model", str(tiny["rembg"] / "u2net-tiny.onnx"))
    return build(ReconSettings.from_env({}, **LOCAL, **overrides))


def render_service(**overrides):
    from services.render.server import build
    from services.render.settings import RenderSettings

    return build(RenderSettings.from_env({}, **LOCAL, **overrides))


def gateway_service(imagegen: str, recon: str, render: str, **overrides):
    import tempfile

    from gateway.server import build
    from gateway.settings import GatewaySettings

    overrides.setdefault("data_dir", tempfile.mkdtemp(prefix="threegen-gateway-"))
    return build(
        GatewaySettings.from_env(
            {}, **LOCAL, imagegen_address=imagegen, recon_address=recon, render_address=render, **overrides
        )
    )


@dataclass
class Stack:
    imagegen: ServerThread
    recon: ServerThread
    render: ServerThread
    gateway: ServerThread


@pytest.fixture(scope="session")
def stack(tiny: dict[str, Path]) -> Iterator[Stack]:
    with (
        serving(imagegen_service(tiny)) as imagegen,
        serving(recon_service(tiny)) as recon,
        serving(render_service()) as render,
        serving(gateway_service(imagegen.address, recon.address, render.address)) as gateway,
    ):
        yield Stack(imagegen, recon, render, gateway)


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status, skipping interpreter teardown: native threads of gRPC /
    torch / onnxruntime, torn down there, once aborted a green run ("terminate called without an
    active exception", exit 134 after 251 passed)."""
    if _EXIT_STATUS and os.environ.get("THREEGEN_TEST_HARD_EXIT", "1") == "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])
