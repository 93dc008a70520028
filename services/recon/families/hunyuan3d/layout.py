"""Find Hunyuan3D-2's published folders: a local copy of the repository or the HF cache.

tencent/Hunyuan3D-2 holds one subfolder per model. Shape: `hunyuan3d-dit-v2-0` (and `-fast`,
`-turbo`; tencent/Hunyuan3D-2mini has `hunyuan3d-dit-v2-mini*`), each a `config.yaml` plus one
checkpoint, `model.fp16.safetensors`, `model.safetensors`, `model.fp16.ckpt` or `model.ckpt`.
Texture: `hunyuan3d-delight-v2-0` and `hunyuan3d-paint-v2-0`, diffusers folders. Only the
subfolders a deployment uses are fetched, and a missing file is named in the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from threegen.weights import WeightsNotFound, resolve

CHECKPOINT_NAMES = ("model.fp16.safetensors", "model.safetensors", "model.fp16.ckpt", "model.ckpt")
DELIGHT = "hunyuan3d-delight-v2-0"
PAINT = "hunyuan3d-paint-v2-0"
PAINT_FILES = ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ShapeFiles:
    config: Path
    checkpoint: Path


@dataclass(frozen=True)
class PaintFiles:
    delight: Path
    paint: Path


def _root(source: str, subfolders: list[str], setting: str) -> Path:
    return resolve(source, setting=setting, allow_patterns=[f"{sub}/*" for sub in subfolders])


def shape_files(source: str, subfolder: str, setting: str = "THREEGEN_RECON_HUNYUAN3D_MODEL") -> ShapeFiles:
    root = _root(source, [subfolder], setting)
    folder = root / subfolder
    if not folder.is_dir():
        raise WeightsNotFound(f"{source} has no {subfolder}/ folder (set THREEGEN_RECON_HUNYUAN3D_SUBFOLDER)")
    config = folder / "config.yaml"
    if not config.is_file():
        raise WeightsNotFound(f"{folder} has no config.yaml")
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return ShapeFiles(config, folder / name)
    raise WeightsNotFound(f"{folder} holds none of the checkpoint names {', '.join(CHECKPOINT_NAMES)}")


def paint_files(source: str, setting: str = "THREEGEN_RECON_HUNYUAN3D_PAINT_MODEL") -> PaintFiles:
    root = _root(source, [DELIGHT, PAINT], setting)
    missing = [f"{DELIGHT}/model_index.json"] if not (root / DELIGHT / "model_index.json").is_file() else []
    missing += [f"{PAINT}/{name}" for name in PAINT_FILES if not (root / PAINT / name).is_file()]
    if missing:
        raise WeightsNotFound(
            f"{source} lacks the texture models' files: {', '.join(missing)} (set {setting})"
        )
    return PaintFiles(root / DELIGHT, root / PAINT)
