"""TripoSR's config.yaml, parsed strictly: an unknown key or a missing required one is an error.

The published file names its modules by import path (`*_cls`); we accept exactly those
names (and our own aliases) so a config for another architecture is refused early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

EXPECTED_CLASSES = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}


class ConfigInvalid(ValueError):
    pass


@dataclass
class ImageTokenizerConfig:
    pretrained_model_name_or_path: str = "facebook/dino-vitb16"
    enable_gradient_checkpointing: bool = False


@dataclass
class TokenizerConfig:
    plane_size: int = 32
    num_channels: int = 1024


@dataclass
class BackboneConfig:
    in_channels: int = 1024
    num_attention_heads: int = 16
    attention_head_dim: int = 64
    num_layers: int = 16
    cross_attention_dim: int | None = 768
    out_channels: int | None = None
    dropout: float = 0.0
    norm_num_groups: int = 32
    attention_bias: bool = False
    activation_fn: str = "geglu"
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    norm_type: str = "layer_norm"
    norm_elementwise_affine: bool = True
    gradient_checkpointing: bool = False


@dataclass
class PostProcessorConfig:
    in_channels: int = 1024
    out_channels: int = 40


@dataclass
class DecoderConfig:
    in_channels: int = 120
    n_neurons: int = 64
    n_hidden_layers: int = 9
    activation: str = "silu"
    bias: bool = True
    weight_init: str | None = "kaiming_uniform"
    bias_init: str | None = None


@dataclass
class RendererConfig:
    radius: float = 0.87
    feature_reduction: str = "concat"
    density_activation: str = "exp"
    density_bias: float = -1.0
    color_activation: str = "sigmoid"
    num_samples_per_ray: int = 128
    randomized: bool = False


@dataclass
class TripoSRConfig:
    cond_image_size: int = 512
    image_tokenizer_cls: str = EXPECTED_CLASSES["image_tokenizer_cls"]
    image_tokenizer: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    tokenizer_cls: str = EXPECTED_CLASSES["tokenizer_cls"]
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    backbone_cls: str = EXPECTED_CLASSES["backbone_cls"]
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    post_processor_cls: str = EXPECTED_CLASSES["post_processor_cls"]
    post_processor: PostProcessorConfig = field(default_factory=PostProcessorConfig)
    decoder_cls: str = EXPECTED_CLASSES["decoder_cls"]
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    renderer_cls: str = EXPECTED_CLASSES["renderer_cls"]
    renderer: RendererConfig = field(default_factory=RendererConfig)

    def check(self) -> None:
        for key, expected in EXPECTED_CLASSES.items():
            if getattr(self, key) != expected:
                raise ConfigInvalid(f"{key} is {getattr(self, key)!r}; this loader builds {expected!r}")
        bb = self.backbone
        if bb.activation_fn != "geglu" or bb.norm_type != "layer_norm":
            raise ConfigInvalid("backbone: only activation_fn=geglu and norm_type=layer_norm are supported")
        if bb.in_channels != self.tokenizer.num_channels:
            raise ConfigInvalid("backbone.in_channels must equal tokenizer.num_channels")
        if self.post_processor.in_channels != (bb.out_channels or bb.in_channels):
            raise ConfigInvalid("post_processor.in_channels must equal the backbone's output channels")
        width = self.post_processor.out_channels * (3 if self.renderer.feature_reduction == "concat" else 1)
        if self.decoder.in_channels != width:
            raise ConfigInvalid(
                f"decoder.in_channels must be {width} for feature_reduction "
                f"{self.renderer.feature_reduction!r}"
            )
        if self.renderer.feature_reduction not in ("concat", "mean"):
            raise ConfigInvalid("renderer.feature_reduction must be concat or mean")
        if self.renderer.density_activation not in ("exp", "trunc_exp", "softplus", "relu", "none"):
            raise ConfigInvalid(f"unknown renderer.density_activation {self.renderer.density_activation!r}")
        if self.decoder.activation not in ("silu", "relu"):
            raise ConfigInvalid(f"unknown decoder.activation {self.decoder.activation!r}")


def load_config(path: Path) -> TripoSRConfig:
    try:
        raw = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(TripoSRConfig), raw)
        OmegaConf.resolve(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigInvalid(f"{path}: {exc}") from exc
    assert isinstance(config, TripoSRConfig)
    config.check()
    return config


def dump_config(config: TripoSRConfig, path: Path) -> None:
    OmegaConf.save(OmegaConf.structured(config), path)
