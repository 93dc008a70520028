"""Every service's settings in one markdown table (README's config section is generated from it)."""

from __future__ import annotations

from pathlib import Path


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


START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def readme_table(text: str) -> str:
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def update_readme(path: Path) -> None:
    text = path.read_text()
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{START}\n{markdown()}\n{END}{after}")
