"""Load SAM 3D Objects from its published layout (facebook/sam-3d-objects, gated on Hugging Face).

The repository keeps everything under `checkpoints/`; upstream's setup moves that folder to
`checkpoints/hf/`. Either layout, or a folder holding `pipeline.yaml` itself, is accepted.
`pipeline.yaml` names, per model, a Hydra yaml (`<model>_config_path`) and a torch pickle
(`<model>_ckpt_path`). The generators' `.ckpt` is `{"state_dict": ...}` with the network under
`_base_models.generator.` and the condition embedder under `_base_models.condition_embedder.`;
the decoders' are raw state dicts. Threegen reads the yaml nodes it needs itself (no Hydra, no
code named by `_target_` is imported) and loads the pickles with `weights_only=True`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from services.recon.dinov2 import ViTConfig, config_from_state
from services.recon.families.sam3d.conditioning import DINO_CONFIGS, build_condition_embedder
from services.recon.families.sam3d.networks import build_shape_pose_flow
from services.recon.families.trellis import networks as trellis
from threegen.weights import (
    CheckpointMismatch,
    WeightsNotFound,
    check_state_dict,
    load_pickled_state,
    resolve,
)

log = logging.getLogger("threegen.recon.sam3d")

SETTING = "THREEGEN_RECON_SAM3D_MODEL"
MODELS = ("ss_generator", "slat_generator", "ss_decoder", "slat_decoder_gs", "slat_decoder_mesh")
GENERATOR_PREFIX = "_base_models.generator."
EMBEDDER_PREFIX = "_base_models.condition_embedder."
# Hydra targets of the decoders and the TRELLIS classes (same keys) threegen runs them with.
DECODERS = {
    "SparseStructureDecoderTdfyWrapper": trellis.SparseStructureDecoder,
    "SLatGaussianDecoderTdfyWrapper": trellis.SLatGaussianDecoder,
    "SLatMeshDecoderTdfyWrapper": trellis.SLatMeshDecoder,
}
# Constructor arguments of upstream's wrappers that do not shape the network.
IGNORED_ARGS = {"_target_", "pretrained_ckpt_path", "device", "use_fp16", "use_checkpoint",
                "reshape_input_to_cube", "condition_embedder", "force_zeros_cond"}  # fmt: skip


@dataclass
class PipelineFiles:
    root: Path
    pipeline: dict

    def config(self, model: str) -> dict:
        return _read_yaml(self.root / self.pipeline[f"{model}_config_path"])

    def checkpoint(self, model: str) -> Path:
        return self.root / self.pipeline[f"{model}_ckpt_path"]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise WeightsNotFound(f"{path} named by pipeline.yaml does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointMismatch(f"{path.name} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointMismatch(f"{path.name} does not hold a mapping")
    return data


def find(source: str, setting: str = SETTING) -> PipelineFiles:
    root = resolve(source, setting=setting, allow_patterns=["checkpoints/*"])
    for folder in (root, root / "checkpoints", root / "checkpoints" / "hf"):
        if (folder / "pipeline.yaml").is_file():
            pipeline = _read_yaml(folder / "pipeline.yaml")
            missing = [
                f"{m}_{part}_path"
                for m in MODELS
                for part in ("config", "ckpt")
                if not pipeline.get(f"{m}_{part}_path")
            ]
            if missing:
                raise CheckpointMismatch(f"{folder / 'pipeline.yaml'} names no {', '.join(missing)}")
            return PipelineFiles(folder, pipeline)
    raise WeightsNotFound(f"{source} holds no pipeline.yaml (nor checkpoints/pipeline.yaml) ({setting})")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsNotFound(f"{path} named by pipeline.yaml does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return load_pickled_state(path)


def _select(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load(model: torch.nn.Module, state: dict, what: str, dtype, device) -> torch.nn.Module:
    check_state_dict(model, state, what)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _generator_specs(files: PipelineFiles, model: str) -> tuple[dict, dict]:
    config = files.config(model)
    try:
        backbone = config["module"]["generator"]["backbone"]["reverse_fn"]["backbone"]
        embedder = config["module"]["condition_embedder"]["backbone"]
    except (KeyError, TypeError) as exc:
        raise CheckpointMismatch(f"{model}.yaml lacks module.generator / module.condition_embedder") from exc
    return backbone, embedder


def dino_shapes(embedder_spec: dict, state: dict) -> dict[str, ViTConfig]:
    """ViT shapes read off the checkpoint for DINO models the published configs do not name
    (tests' tiny ones); a known name keeps its fixed shape, so a wrong checkpoint is refused."""
    found = {}
    for index, (node, _) in enumerate(embedder_spec.get("embedder_list") or []):
        name = node.get("dino_model") if isinstance(node, dict) else None
        prefix = f"module_list.{index}.backbone."
        if name is None or name in DINO_CONFIGS or f"{prefix}cls_token" not in state:
            continue
        found[name] = config_from_state(state, prefix)
    return found


def generator_networks(
    files: PipelineFiles, model: str, dino_shapes: dict[str, ViTConfig] | None = None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(velocity network, condition embedder) of `ss_generator` or `slat_generator`, unloaded."""
    return _networks(model, *_generator_specs(files, model), dino_shapes)


def _networks(
    model: str, backbone: dict, embedder_spec: dict, dino_shapes: dict[str, ViTConfig] | None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    target = str(backbone.get("_target_", "")).rsplit(".", 1)[-1]
    args = {k: v for k, v in backbone.items() if k not in IGNORED_ARGS}
    if target == "SparseStructureFlowTdfyWrapper":
        network = build_shape_pose_flow(args)
    elif target == "SLatFlowModelTdfyWrapper":
        network = trellis.SLatFlowModel(**args)
    else:
        raise CheckpointMismatch(f"{model}.yaml names {target!r}, which threegen does not implement")
    try:
        embedder = build_condition_embedder(embedder_spec, dino_shapes)
    except ValueError as exc:
        raise CheckpointMismatch(f"{model}.yaml: {exc}") from exc
    return network, embedder


def build_generator(files: PipelineFiles, model: str, dtype, device):
    path = files.checkpoint(model)
    state = load_state(path)
    state = state.get("state_dict", state)
    backbone, embedder_spec = _generator_specs(files, model)
    embedder_state = _select(state, EMBEDDER_PREFIX)
    network, embedder = _networks(model, backbone, embedder_spec, dino_shapes(embedder_spec, embedder_state))
    generator_state = _select(state, GENERATOR_PREFIX)
    stray = [k for k in generator_state if not k.startswith("reverse_fn.backbone.")]
    if stray:
        raise CheckpointMismatch(f"{path.name}: unexpected generator key(s), e.g. {', '.join(stray[:5])}")
    network_state = _select(generator_state, "reverse_fn.backbone.")
    network = _load(network, network_state, f"{path.name} (generator)", dtype, device)
    embedder = _load(embedder, embedder_state, f"{path.name} (condition embedder)", dtype, device)
    return network, embedder


def decoder_network(files: PipelineFiles, model: str) -> torch.nn.Module:
    config = files.config(model)
    target = str(config.get("_target_", "")).rsplit(".", 1)[-1]
    if target not in DECODERS:
        raise CheckpointMismatch(f"{model}.yaml names {target!r}, which threegen does not implement")
    return DECODERS[target](**{k: v for k, v in config.items() if k not in IGNORED_ARGS})


def build_decoder(files: PipelineFiles, model: str, dtype, device) -> torch.nn.Module:
    path = files.checkpoint(model)
    state = load_state(path)
    return _load(
        decoder_network(files, model), state, f"{path.name} does not match {model}.yaml", dtype, device
    )
