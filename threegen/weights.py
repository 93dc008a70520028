"""Find model weights: a local folder, or a Hugging Face repo id in the HF cache.

On a machine with a network, a repo id missing from the cache is fetched into HF_HOME by
huggingface_hub; with HF_HUB_OFFLINE=1 (or no network) only the cache is used and a clear
error says what is missing and how to provide it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("threegen.weights")


class WeightsNotFound(FileNotFoundError):
    """The weights named by a setting cannot be found locally nor fetched."""


class CheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not match the architecture its config describes."""


def check_state_dict(model: object, state: dict, what: str) -> None:
    """Strict loading with a useful refusal: say which keys are missing, unexpected or of
    another shape (a few of each) instead of torch's wall of names. `what` opens the message."""
    expected = model.state_dict()  # type: ignore[attr-defined]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:5])}")
    if wrong:
        problems.append(f"{len(wrong)} key(s) with other shapes, e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise CheckpointMismatch(f"{what}: " + "; ".join(problems))


def load_pickled_state(path: Path, trusted: bool = False, hint: str = "") -> dict:
    """A torch pickle (`.ckpt`, `.pt`) as a dict, read with `weights_only=True` unless the caller
    trusts the file; a file that cannot be read that way is refused with its name and `hint`."""
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        how = "" if trusted else " as tensors only (weights_only=True)"
        detail = str(exc).splitlines()[0]
        raise CheckpointMismatch(f"{path.name} cannot be read{how}{hint}: {detail}") from exc
    if not isinstance(data, dict):
        raise CheckpointMismatch(f"{path.name} does not hold a state dict")
    return data


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(source: str, *, setting: str = "", allow_patterns: list[str] | None = None) -> Path:
    """Return a local folder holding the weights named by `source`.

    `source` is a directory path, or `org/name` optionally followed by `@revision`.
    """
    hint = f" (set {setting})" if setting else ""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith(("/", "./", "../", "~")) or source.count("/") != 1:
        raise WeightsNotFound(f"weights folder {source!r} does not exist{hint}")
    repo_id, _, revision = source.partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            allow_patterns=allow_patterns,
            local_files_only=offline(),
        )
    except LocalEntryNotFoundError as exc:
        where = os.environ.get("HF_HOME", "~/.cache/huggingface")
        mode = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached"
        raise WeightsNotFound(
            f"{repo_id} is not in the Hugging Face cache under {where} and {mode}{hint}; "
            f"download it on a networked machine or point the setting at a local folder"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsNotFound(f"could not fetch {repo_id}: {exc}{hint}") from exc
    return Path(str(folder))


def pick_device(preference: str = "auto") -> str:
    """`auto` means the first CUDA device when torch sees one, otherwise the CPU."""
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def module_bytes(module: object) -> int:
    """Bytes held by a torch module's parameters and buffers."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:  # type: ignore[attr-defined]
        total += tensor.numel() * tensor.element_size()
    return total
