"""Load a TRELLIS pipeline from its published layout.

microsoft/TRELLIS-image-large (and TRELLIS-text-base/-large/-xlarge) hold `pipeline.json`
(`{"name": ..., "args": {"models": {key: path}, "sparse_structure_sampler": ..., "slat_sampler":
..., "slat_normalization": ..., "image_cond_model" | "text_cond_model": ...}}`) and, per model,
`ckpts/<stem>.json` (`{"name": <class>, "args": {...}}`) + `ckpts/<stem>.safetensors`. A model
path is relative to the repository, or names another repository (`owner/repo/ckpts/<stem>`:
the text repositories take their decoders from JeffreyXiang/TRELLIS-image-large), found locally
or in the HF cache. Unlike upstream, a local failure is reported as itself, not retried as a
download that then fails with an unrelated hub error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from services.recon.families.trellis.networks import CLASSES
from threegen.weights import CheckpointMismatch, WeightsNotFound, check_state_dict, resolve

log = logging.getLogger("threegen.recon.trellis")

NEEDED = (
    "sparse_structure_flow_model",
    "sparse_structure_decoder",
    "slat_flow_model",
    "slat_decoder_mesh",
    "slat_decoder_gs",
)


@dataclass
class PipelineFiles:
    root: Path
    config: dict
    models: dict[str, Path]  # key -> checkpoint path without extension

    @property
    def args(self) -> dict:
        return self.config["args"]

    @property
    def kind(self) -> str:
        return "text" if "text_cond_model" in self.args else "image"


def _model_path(root: Path, entry: str, setting: str) -> Path:
    local = root / entry
    if local.with_suffix(".json").is_file() and local.with_suffix(".safetensors").is_file():
        return local
    parts = entry.split("/")
    if len(parts) > 2:  # owner/repo/rest: another repository
        repo = "/".join(parts[:2])
        rest = "/".join(parts[2:])
        folder = resolve(repo, setting=setting, allow_patterns=[f"{rest}.json", f"{rest}.safetensors"])
        path = folder / rest
        if path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file():
            return path
    raise WeightsNotFound(
        f"{entry}.json / .safetensors named by pipeline.json are in neither {root} nor the HF cache"
    )


def find(source: str, setting: str = "THREEGEN_RECON_TRELLIS_MODEL") -> PipelineFiles:
    root = resolve(source, setting=setting, allow_patterns=["pipeline.json", "ckpts/*"])
    path = root / "pipeline.json"
    if not path.is_file():
        raise WeightsNotFound(f"{source} has no pipeline.json ({setting})")
    config = json.loads(path.read_text())
    entries = config.get("args", {}).get("models", {})
    missing = [key for key in NEEDED if key not in entries]
    if missing:
        raise WeightsNotFound(f"{path} names no {', '.join(missing)}")
    return PipelineFiles(root, config, {key: _model_path(root, entries[key], setting) for key in NEEDED})


def build(stem: Path, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.nn.Module:
    spec = json.loads(stem.with_suffix(".json").read_text())
    name = spec["name"].removeprefix("Elastic")
    if name not in CLASSES:
        raise CheckpointMismatch(f"{stem.name}.json names {spec['name']}, which threegen does not implement")
    model = CLASSES[name](**spec["args"])
    state = load_file(str(stem.with_suffix(".safetensors")))
    check_state_dict(model, state, f"{stem.name}.safetensors does not match {stem.name}.json")
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
