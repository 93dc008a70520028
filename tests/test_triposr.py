"""TripoSR: the published layout loads strictly; anything off is an error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from services.recon.families.triposr.config import ConfigInvalid, load_config
from services.recon.families.triposr.engine import TripoSREngine, TripoSRParams
from services.recon.families.triposr.loader import CheckpointMismatch, load
from services.recon.families.triposr.preprocess import prepare
from services.recon.isosurface import EmptySurface
from threegen.errors import Cancelled
from threegen.images import resize_foreground
from threegen.runtime.work import Reporter
from threegen.weights import WeightsNotFound


@pytest.fixture()
def copy(tiny, tmp_path) -> Path:
    target = tmp_path / "triposr"
    shutil.copytree(tiny["triposr"], target)
    return target


def edit_state(folder: Path, change) -> None:
    state = torch.load(folder / "model.ckpt", weights_only=True)
    change(state)
    torch.save(state, folder / "model.ckpt")


def test_tiny_checkpoint_is_a_flat_state_dict_with_published_key_names(tiny) -> None:
    state = torch.load(tiny["triposr"] / "model.ckpt", weights_only=True)
    assert "image_tokenizer.model.encoder.layer.0.attention.attention.query.weight" in state
    assert "image_tokenizer.model.pooler.dense.weight" in state
    assert "backbone.transformer_blocks.0.attn2.to_k.weight" in state
    assert "backbone.transformer_blocks.0.ff.net.0.proj.weight" in state
    assert "backbone.transformer_blocks.0.attn1.to_out.0.bias" in state
    assert "backbone.transformer_blocks.0.attn1.to_q.bias" not in state  # attention_bias=False
    assert "post_processor.upsample.weight" in state and "tokenizer.embeddings" in state
    assert {k for k in state if k.startswith("decoder.layers.")} == {
        f"decoder.layers.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")
    }
    assert not any("image_mean" in k for k in state)


def test_missing_key_is_named(copy: Path) -> None:
    edit_state(copy, lambda s: s.pop("backbone.proj_out.bias"))
    with pytest.raises(CheckpointMismatch, match=r"1 missing key\(s\), e.g. backbone.proj_out.bias"):
        load(str(copy))


def test_unexpected_key_is_named(copy: Path) -> None:
    edit_state(copy, lambda s: s.__setitem__("renderer.extra", torch.zeros(1)))
    with pytest.raises(CheckpointMismatch, match=r"unexpected key\(s\), e.g. renderer.extra"):
        load(str(copy))


def test_wrong_shape_is_named(copy: Path) -> None:
    edit_state(copy, lambda s: s.__setitem__("tokenizer.embeddings", torch.zeros(3, 32, 4, 4)))
    with pytest.raises(CheckpointMismatch, match=r"tokenizer.embeddings: checkpoint \(3, 32, 4, 4\)"):
        load(str(copy))


def test_unknown_config_key_and_foreign_class_are_refused(copy: Path) -> None:
    text = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(text + "\nsurprise: 1\n")
    with pytest.raises(ConfigInvalid, match="surprise"):
        load_config(copy / "config.yaml")
    (copy / "config.yaml").write_text(text.replace("tsr.models.network_utils.NeRFMLP", "other.Decoder"))
    with pytest.raises(ConfigInvalid, match="decoder_cls"):
        load_config(copy / "config.yaml")


def test_missing_folder_and_files_say_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="does not exist"):
        load(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFound, match=r"config\.yaml"):
        load(str(tmp_path / "empty"))


def test_hf_cache_layout_resolves_offline(tiny, tmp_path: Path, monkeypatch) -> None:
    snapshot = tmp_path / "hub" / "models--stabilityai--TripoSR" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny["triposr"], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load("stabilityai/TripoSR")
    assert loaded.folder == snapshot


def test_foreground_is_centred_and_scaled() -> None:
    rgba = np.zeros((100, 200, 4), dtype=np.uint8)
    rgba[10:30, 20:60] = 255  # a 20 x 40 object off-centre
    out = np.asarray(resize_foreground(Image.fromarray(rgba, "RGBA"), 0.5))
    assert out.shape[:2] == (80, 80)  # object side 40 / 0.5
    ys, xs = np.nonzero(out[..., 3])
    assert (xs.min(), xs.max()) == (20, 59) and (ys.min(), ys.max()) == (30, 49)
    tensor = prepare(Image.fromarray(rgba, "RGBA"), 64, 0.85)
    assert tensor.shape == (1, 3, 64, 64)
    assert torch.allclose(tensor[0, :, 0, 0], torch.full((3,), 0.5), atol=1 / 255)  # grey background


def test_engine_makes_an_outward_coloured_mesh_and_stops_when_cancelled(tiny) -> None:
    engine = TripoSREngine(load(str(tiny["triposr"])), chunk_points=4096)
    image = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    out = engine.reconstruct(image, TripoSRParams(mc_resolution=48), Reporter())
    mesh = trimesh.Trimesh(out.vertices, out.faces, vertex_colors=out.colors)
    assert len(mesh.faces) > 100 and out.colors.dtype == np.uint8
    assert np.abs(out.vertices).max() <= 0.87 + 1e-5
    watertight = [b for b in mesh.split(only_watertight=True)]
    assert watertight and all(b.volume > 0 for b in watertight)  # normals point out

    reporter = Reporter()
    seen = []

    def emit(event) -> None:
        seen.append(event)
        if len(seen) == 3:
            reporter.cancel_event.set()

    reporter._emit = emit
    with pytest.raises(Cancelled):
        engine.reconstruct(image, TripoSRParams(mc_resolution=128), reporter)
    assert len(seen) == 3

    with pytest.raises(EmptySurface, match="never crosses the level 0;") as caught:
        engine.reconstruct(image, TripoSRParams(mc_resolution=32, density_threshold=0.0), Reporter())
    assert caught.value.violations[0][0] == "options.triposr.density_threshold"
