"""Tiny random-weight checkpoints for every model, written once on first use.

`threegen up --tiny` and the tests point the services at these folders; they are written
by the project in each model's real on-disk format and loaded through the real loaders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

VERSION = "6"  # bump when a writer changes, so stale folders are rewritten


def default_root() -> Path:
    configured = os.environ.get("THREEGEN_TINY_DIR")
    if configured:
        return Path(configured).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "threegen" / "tiny"


def _writers() -> dict[str, object]:
    from services.imagegen.tiny import (
        write_tiny_clip,
        write_tiny_rembg,
        write_tiny_sd_turbo,
        write_tiny_sdxl_turbo,
    )
    from services.recon.families.triposr.tiny import write_tiny_triposr

    def hunyuan3d(folder: Path) -> Path:
        from services.recon.families.hunyuan3d.tiny import write_tiny_hunyuan3d

        return write_tiny_hunyuan3d(folder)

    def trellis(folder: Path) -> Path:
        from services.recon.families.trellis.tiny import write_tiny_trellis

        return write_tiny_trellis(folder)

    def sam3d(folder: Path) -> Path:
        from services.recon.families.sam3d.tiny import write_tiny_sam3d

        return write_tiny_sam3d(folder)

    def xcube(folder: Path) -> Path:
        from services.recon.families.xcube.tiny import write_tiny_xcube

        return write_tiny_xcube(folder)

    return {
        "sd-turbo": write_tiny_sd_turbo,
        "sdxl-turbo": write_tiny_sdxl_turbo,
        "clip": write_tiny_clip,
        "rembg": write_tiny_rembg,
        "triposr": write_tiny_triposr,
        "hunyuan3d": hunyuan3d,
        "trellis": trellis,
        "sam3d": sam3d,
        "xcube": xcube,
    }


# What the default stack (imagegen + TripoSR) needs; the other families' folders on request.
STACK = ("sd-turbo", "sdxl-turbo", "clip", "rembg", "triposr")


def ensure_tiny_weights(root: Path | None = None, names: tuple[str, ...] = STACK) -> dict[str, Path]:
    """Write any missing tiny checkpoint of `names` under root (atomically); return name -> folder."""
    root = root or default_root()
    root.mkdir(parents=True, exist_ok=True)
    folders = {}
    writers = _writers()
    for name in names:
        writer = writers[name]
        folder = root / name
        marker = folder / ".threegen-tiny"
        if not (marker.exists() and marker.read_text() == VERSION):
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            try:
                writer(scratch)  # type: ignore[operator]
                (scratch / ".threegen-tiny").write_text(VERSION)
                if folder.exists():
                    shutil.rmtree(folder)
                scratch.rename(folder)
            finally:
                if scratch.exists():
                    shutil.rmtree(scratch, ignore_errors=True)
        folders[name] = folder
    return folders


def tiny_environment(folders: dict[str, Path]) -> dict[str, str]:
    """Environment that points every service at the tiny checkpoints."""
    return {
        "THREEGEN_IMAGEGEN_SD_TURBO_MODEL": str(folders["sd-turbo"]),
        "THREEGEN_IMAGEGEN_SDXL_TURBO_MODEL": str(folders["sdxl-turbo"]),
        "THREEGEN_IMAGEGEN_CLIP_MODEL": str(folders["clip"]),
        "THREEGEN_IMAGEGEN_REMBG_MODEL": str(folders["rembg"] / "u2net-tiny.onnx"),
        "THREEGEN_RECON_TRIPOSR_MODEL": str(folders["triposr"]),
        "THREEGEN_RECON_REMBG_MODEL": str(folders["rembg"] / "u2net-tiny.onnx"),
        "HF_HUB_OFFLINE": "1",
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m threegen.tiny --dir DIR`: write the tiny checkpoints and print the environment
    that points the services at them (used by the Kubernetes `local` overlay's init container)."""
    import argparse

    parser = argparse.ArgumentParser(description="write tiny random-weight checkpoints")
    parser.add_argument("--dir", default=str(default_root()))
    args = parser.parse_args(argv)
    for name, value in tiny_environment(ensure_tiny_weights(Path(args.dir))).items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
