"""Load TripoSR from its published layout: config.yaml + model.ckpt (a flat state dict).

The DINO ViT's shape comes from its config.json (facebook/dino-vitb16), read through
transformers: next to the checkpoint, in a local folder, or from the HF cache. Loading is
strict: a missing or unexpected key, or a wrong shape, is an error that names it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from services.recon.families.triposr.config import TripoSRConfig, load_config
from services.recon.families.triposr.model import TripoSR
from threegen.weights import CheckpointMismatch, WeightsNotFound, check_state_dict, resolve

log = logging.getLogger("threegen.recon.triposr")

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.ckpt"


@dataclass
class LoadedTripoSR:
    model: TripoSR
    source: str
    folder: Path
    device: torch.device
    dtype: torch.dtype


def vit_config(config: TripoSRConfig, folder: Path) -> object:
    """The DINO ViT config: `dino/config.json` beside the checkpoint, else the configured source."""
    from transformers import ViTConfig

    source = config.image_tokenizer.pretrained_model_name_or_path
    candidates = [folder / source, folder / "dino", Path(source).expanduser()]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return ViTConfig.from_pretrained(str(candidate))
    try:
        return ViTConfig.from_pretrained(str(resolve(source, allow_patterns=["config.json"])))
    except WeightsNotFound as exc:
        raise WeightsNotFound(
            f"the DINO config {source!r} named by {folder / CONFIG_NAME} was not found beside the "
            f"checkpoint nor in the HF cache ({exc})"
        ) from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path} does not hold a state dict")
    return state


def load(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedTripoSR:
    """Build TripoSR from `source` (a folder or an HF repo id such as stabilityai/TripoSR)."""
    folder = resolve(
        source, setting="THREEGEN_RECON_TRIPOSR_MODEL", allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]
    )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise WeightsNotFound(
                f"{folder} has no {name}; a TripoSR folder holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
    config = load_config(folder / CONFIG_NAME)
    with torch.device("meta"):
        model = TripoSR(config, vit_config(config, folder))
    state = read_state_dict(folder / WEIGHTS_NAME)
    check_state_dict(model, state, "model.ckpt does not match config.yaml")
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the checkpoint; rebuild them on the real device.
    model.image_tokenizer.register_buffer(
        "image_mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), persistent=False
    )
    model.image_tokenizer.register_buffer(
        "image_std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1), persistent=False
    )
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("loaded TripoSR from %s on %s (%s)", folder, device, dtype)
    return LoadedTripoSR(model, source, folder, torch.device(device), dtype)


def save(model: TripoSR, folder: Path, dino_config: dict | None = None) -> None:
    """Write a model in the published layout (used for tiny and full-size test checkpoints)."""
    from services.recon.families.triposr.config import dump_config

    folder.mkdir(parents=True, exist_ok=True)
    dump_config(model.config, folder / CONFIG_NAME)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS_NAME)
    if dino_config is not None:
        (folder / "dino").mkdir(exist_ok=True)
        (folder / "dino" / "config.json").write_text(json.dumps(dino_config, indent=2))
