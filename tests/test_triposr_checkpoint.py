"""The published stabilityai/TripoSR layout at full size: config.yaml + model.ckpt load strictly.

No weights can be downloaded here, so the test writes a checkpoint with exactly the key set
and shapes of the published model (uninitialised values: only names and shapes matter to a
strict load) next to the published config.yaml, and loads it through the real loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.full_size import DINO_VITB16, triposr_model
from services.recon.families.triposr.loader import CheckpointMismatch, load

# stabilityai/TripoSR config.yaml: the published values, in the published structure.
PUBLISHED_CONFIG = """\
cond_image_size: 512

image_tokenizer_cls: tsr.models.tokenizers.image.DINOSingleImageTokenizer
image_tokenizer:
  pretrained_model_name_or_path: "facebook/dino-vitb16"

tokenizer_cls: tsr.models.tokenizers.triplane.Triplane1DTokenizer
tokenizer:
  plane_size: 32
  num_channels: 1024

backbone_cls: tsr.models.transformer.transformer_1d.Transformer1D
backbone:
  in_channels: ${tokenizer.num_channels}
  num_attention_heads: 16
  attention_head_dim: 64
  num_layers: 16
  cross_attention_dim: 768

post_processor_cls: tsr.models.network_utils.TriplaneUpsampleNetwork
post_processor:
  in_channels: 1024
  out_channels: 40

decoder_cls: tsr.models.network_utils.NeRFMLP
decoder:
  in_channels: 120
  n_neurons: 64
  n_hidden_layers: 9
  activation: silu

renderer_cls: tsr.models.nerf_renderer.TriplaneNeRFRenderer
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 128
"""


@pytest.fixture(scope="module")
def published_layout(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stabilityai-TripoSR")
    (folder / "config.yaml").write_text(PUBLISHED_CONFIG)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in triposr_model("meta").state_dict().items()}
    torch.save({k: torch.empty(shape) for k, shape in shapes.items()}, folder / "model.ckpt")
    (folder / "dino").mkdir()
    (folder / "dino" / "config.json").write_text(json.dumps(DINO_VITB16))
    return folder


def test_published_key_set_and_shapes_load_strictly(published_layout: Path) -> None:
    state = torch.load(published_layout / "model.ckpt", weights_only=True, mmap=True)
    assert len(state) == 549
    assert sum(v.numel() for v in state.values()) == 419_275_628
    expected_shapes = {
        "image_tokenizer.model.embeddings.position_embeddings": (1, 197, 768),
        "image_tokenizer.model.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "image_tokenizer.model.pooler.dense.weight": (768, 768),
        "tokenizer.embeddings": (3, 1024, 32, 32),
        "backbone.transformer_blocks.15.attn2.to_k.weight": (1024, 768),
        "backbone.transformer_blocks.0.ff.net.0.proj.weight": (8192, 1024),
        "backbone.transformer_blocks.0.ff.net.2.weight": (1024, 4096),
        "post_processor.upsample.weight": (1024, 40, 2, 2),
        "decoder.layers.0.weight": (64, 120),
        "decoder.layers.18.weight": (4, 64),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    loaded = load(str(published_layout))
    config = loaded.model.config
    assert config.backbone.in_channels == 1024  # ${tokenizer.num_channels} resolved
    assert config.image_tokenizer.pretrained_model_name_or_path == "facebook/dino-vitb16"
    assert sum(p.numel() for p in loaded.model.parameters()) == 419_275_628


def test_a_renamed_vit_key_is_refused_by_name(published_layout: Path, tmp_path: Path) -> None:
    state = torch.load(published_layout / "model.ckpt", weights_only=True, mmap=True)
    # transformers 5 renamed ViT modules; a checkpoint re-saved that way must not half-load.
    state["image_tokenizer.model.encoder.layers.0.attention.q_proj.weight"] = state.pop(
        "image_tokenizer.model.encoder.layer.0.attention.attention.query.weight"
    )
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "config.yaml").write_text(PUBLISHED_CONFIG)
    (folder / "dino").mkdir()
    (folder / "dino" / "config.json").write_text(json.dumps(DINO_VITB16))
    torch.save(dict(state), folder / "model.ckpt")
    with pytest.raises(CheckpointMismatch) as caught:
        load(str(folder))
    message = str(caught.value)
    assert (
        "missing key(s), e.g. image_tokenizer.model.encoder.layer.0.attention.attention.query.weight"
        in message
    )
    assert "unexpected key(s), e.g. image_tokenizer.model.encoder.layers.0.attention.q_proj.weight" in message
