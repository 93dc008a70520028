"""Configuration: typed env parsing with clear errors, legacy names, and a README that matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.recon.settings import ReconSettings
from services.render.settings import RenderSettings
from threegen.config import ConfigError
from threegen.settings_table import markdown, readme_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_values_are_parsed_by_type() -> None:
    settings = ReconSettings.from_env(
        {
            "THREEGEN_RECON_PORT": "6000",
            "THREEGEN_RECON_GRACE_SECONDS": "2.5",
            "THREEGEN_RECON_FAMILIES": "triposr, ",
        }
    )
    assert (settings.port, settings.grace_seconds, settings.families) == (6000, 2.5, ("triposr",))


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="THREEGEN_RECON_MAX_QUEUED='lots'"):
        ReconSettings.from_env({"THREEGEN_RECON_MAX_QUEUED": "lots"})
    with pytest.raises(ConfigError, match=r"THREEGEN_RECON_FAMILIES='nerf'.*unknown families"):
        ReconSettings.from_env({"THREEGEN_RECON_FAMILIES": "nerf"})
    with pytest.raises(ConfigError, match="THREEGEN_RENDER_GL_PLATFORM"):
        RenderSettings.from_env({"THREEGEN_RENDER_GL_PLATFORM": "vulkan"})


def test_seed_variable_names_are_fallbacks_and_prefixed_names_win() -> None:
    assert ReconSettings.from_env({"MAX_QUEUE_SIZE": "3", "LOG_FORMAT": "plain"}).max_queued == 3
    both = ReconSettings.from_env({"MAX_QUEUE_SIZE": "3", "THREEGEN_RECON_MAX_QUEUED": "5"})
    assert both.max_queued == 5


def test_readme_config_table_is_current() -> None:
    current = readme_table(README.read_text())
    assert current == markdown().strip(), (
        "README config table is stale: run `threegen config --readme README.md`"
    )
