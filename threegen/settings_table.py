"""Every service's settings in one markdown table (README's config section is generated from it)."""

from __future__ import annotations


def all_settings() -> list[type]:
    from gateway.settings import GatewaySettings
    from services.imagegen.settings import ImageGenSettings
    from services.recon.settings import ReconSettings
    from services.render.settings import RenderSettings

    return [GatewaySettings, ImageGenSettings, ReconSettings, RenderSettings]


def markdown() -> str:
    from threegen.config import markdown_table
    from threegen.runtime.settings import ServerSettings

    return (
        "`<SERVICE>` is `GATEWAY`, `IMAGEGEN`, `RECON` or `RENDER`. Standard variables are honoured too: "
        "`HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`, `PYOPENGL_PLATFORM`, `PYTORCH_CUDA_ALLOC_CONF`.\n\n"
        + markdown_table(all_settings(), ServerSettings)
    )
