"""Find and read XCube's checkpoints (nv-tlabs/XCube; weights in a local folder, as seed 004).

XCube's objaverse inference reads its configs from the repository (`configs/objaverse/
train_diffusion_16x16x16_dense_text_cond.yaml` for the coarse stage, `..._128x128x128_sparse_
text_cond.yaml` for the fine one), each naming its VAE config, and PyTorch-Lightning checkpoints
`checkpoints/objaverse/{coarse,fine}_diffusion/last.ckpt` whose `state_dict` holds the VAE
(`vae.*`), the UNet (`unet.*`), its EMA copy (`unet_ema.*`: parameter names without dots) and
`scale_factor`. A folder laid out like the repository is read as such; seed 004's layout
(`objaverse_coarse/config.yaml + last.ckpt`, `objaverse_fine/...`, a config merged with its
includes) is read too. Configs are OmegaConf yaml with XCube's `include_configs` (paths relative
to the including file) and `assign` overlays; VAE config paths are relative to the root.

Checkpoints load with `weights_only=True`; Lightning files that pickle other objects (their
hyper-parameters) are refused unless THREEGEN_RECON_XCUBE_TRUST_CHECKPOINTS says the local files
are trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from threegen.weights import CheckpointMismatch, WeightsNotFound, load_pickled_state

REPO_LAYOUT = {
    "coarse": ("configs/objaverse/train_diffusion_16x16x16_dense_text_cond.yaml",
               "checkpoints/objaverse/coarse_diffusion/last.ckpt"),
    "fine": ("configs/objaverse/train_diffusion_128x128x128_sparse_text_cond.yaml",
             "checkpoints/objaverse/fine_diffusion/last.ckpt"),
}  # fmt: skip
SEED_LAYOUT = {"coarse": "objaverse_coarse", "fine": "objaverse_fine"}
NULL_EMBEDDING = "assets/null_text_emb.pkl"


def parse_config(path: Path) -> dict:
    """XCube's config reading: includes merged under the file, then `assign` overlays, resolved."""
    from omegaconf import OmegaConf

    def load(file: Path):
        if not file.is_file():
            raise WeightsNotFound(f"XCube config {file} does not exist")
        config = OmegaConf.load(file)
        includes = config.pop("include_configs", None) or []
        if isinstance(includes, str):
            includes = [includes]
        base = OmegaConf.create()
        for include in includes:
            base = OmegaConf.merge(base, load(file.parent / include))
        config = OmegaConf.merge(base, config)
        overlays = config.pop("assign", None)
        if overlays:
            config = OmegaConf.merge(
                config, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overlays.items()])
            )
        return config

    return _plain(load(Path(path)))


def _plain(node):
    """DictConfig -> dict, interpolations resolved where they can be: XCube's data sections refer to
    keys only its training scripts set, and inference never reads them."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import InterpolationResolutionError

    if isinstance(node, DictConfig):
        items = (
            (key, lambda key=key: node[key], lambda key=key: node._get_node(key)._value()) for key in node
        )
    elif isinstance(node, ListConfig):
        items = ((i, lambda i=i: node[i], lambda i=i: node._get_node(i)._value()) for i in range(len(node)))
    else:
        return node
    out = {}
    for key, value, raw in items:
        try:
            out[key] = _plain(value())
        except InterpolationResolutionError:
            out[key] = raw()
    return out if isinstance(node, DictConfig) else list(out.values())


@dataclass
class StageFiles:
    config: dict  # merged diffusion config
    vae_config: dict  # merged VAE config
    checkpoint: Path


@dataclass
class XCubeFiles:
    root: Path
    coarse: StageFiles
    fine: StageFiles | None
    null_embedding: Path | None


def _stage(root: Path, config_path: Path, checkpoint: Path) -> StageFiles:
    if not checkpoint.is_file():
        raise WeightsNotFound(f"XCube checkpoint {checkpoint} does not exist")
    config = parse_config(config_path)
    vae_path = config.get("vae_config")
    if not vae_path:
        raise CheckpointMismatch(f"{config_path.name} names no vae_config")
    candidates = [root / vae_path, config_path.parent / vae_path, config_path.parent / Path(vae_path).name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        where = f"neither {root} nor {config_path.parent}"
        raise WeightsNotFound(f"{config_path.name} names vae_config {vae_path}, found under {where}")
    return StageFiles(config, parse_config(found), checkpoint)


def find(source: str, setting: str = "THREEGEN_RECON_XCUBE_MODEL") -> XCubeFiles:
    root = Path(source).expanduser()
    if not root.is_dir():
        raise WeightsNotFound(f"XCube folder {source!r} does not exist ({setting}; XCube's weights are not "
                              "on Hugging Face: see the family's README)")  # fmt: skip
    stages: dict[str, StageFiles | None] = {}
    for stage in ("coarse", "fine"):
        config, ckpt = (root / p for p in REPO_LAYOUT[stage])
        seed = root / SEED_LAYOUT[stage]
        if config.is_file() or ckpt.is_file():
            stages[stage] = _stage(root, config, ckpt)
        elif (seed / "config.yaml").is_file():
            stages[stage] = _stage(root, seed / "config.yaml", seed / "last.ckpt")
        else:
            stages[stage] = None
    coarse = stages["coarse"]
    if coarse is None:
        raise WeightsNotFound(
            f"{root} holds neither {REPO_LAYOUT['coarse'][1]} (XCube's layout) nor "
            f"{SEED_LAYOUT['coarse']}/config.yaml + last.ckpt ({setting})"
        )
    null = root / NULL_EMBEDDING
    return XCubeFiles(root, coarse, stages["fine"], null if null.is_file() else None)


def load_checkpoint(path: Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    hint = "" if trusted else " (set THREEGEN_RECON_XCUBE_TRUST_CHECKPOINTS=true for local files you trust)"
    data = load_pickled_state(path, trusted, hint)
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path.name} holds no state_dict")
    return state


def split_state(state: dict, unet: torch.nn.Module, use_ema: bool = True) -> tuple[dict, dict, float]:
    """(UNet weights, VAE weights, scale_factor) of a diffusion checkpoint; the UNet's from its EMA
    copy when present, as XCube's inference (`--ema`) uses it."""
    vae = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    net = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
    if use_ema and any(k.startswith("unet_ema.") for k in state):
        for name, _ in unet.named_parameters():
            key = "unet_ema." + name.replace(".", "")
            if key not in state:
                raise CheckpointMismatch(f"the EMA copy lacks {key}")
            net[name] = state[key]
    scale = state.get("scale_factor")
    return net, vae, float(scale) if scale is not None else 1.0
