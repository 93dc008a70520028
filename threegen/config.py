"""Configuration from environment variables: one prefix per service, one documented table.

Each service declares a frozen dataclass of settings; every field carries its default and
a one-line description, so the README's table is generated from the code
(`threegen config --markdown`) and a test keeps the two equal. A few names that the seed
systems' users already set (LOG_LEVEL, MAX_QUEUE_SIZE, CLIP_REPO, ...) are read as
fallbacks when the prefixed variable is absent.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Settings")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """An environment variable holds a value of the wrong type or range."""


def setting(default: Any, doc: str, *, fallback: str | None = None) -> Any:
    """Declare a setting: its default, a description for the table, an optional legacy name."""
    return dataclasses.field(default=default, metadata={"doc": doc, "fallback": fallback})


def _parse(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE - {''})}")
        if kind is int:
            return int(raw.strip())
        if kind is float:
            return float(raw.strip())
        if kind is str:
            return raw
        if origin is tuple:
            (item_kind, _) = typing.get_args(kind)
            return tuple(_parse(part.strip(), item_kind, name) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    raise TypeError(f"unsupported setting type {kind!r} for {name}")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every service's settings; subclasses set PREFIX and add fields."""

    PREFIX: ClassVar[str] = "THREEGEN_"
    TITLE: ClassVar[str] = "shared"

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return cls.PREFIX + field_name.upper()

    @classmethod
    def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides:
                values[field.name] = overrides[field.name]
                continue
            name = cls.env_name(field.name)
            raw = environ.get(name)
            fallback = field.metadata.get("fallback")
            if raw is None and fallback:
                raw, name = environ.get(fallback), fallback
            if raw is not None:
                values[field.name] = _parse(raw, hints[field.name], name)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Subclasses raise ConfigError for values out of range."""

    def require(self, ok: bool, field_name: str, description: str) -> None:
        if not ok:
            value = getattr(self, field_name)
            raise ConfigError(f"{self.env_name(field_name)}={_format(value)!r}: {description}")

    @classmethod
    def table_rows(cls) -> list[tuple[str, str, str]]:
        rows = []
        for field in dataclasses.fields(cls):
            doc = field.metadata.get("doc", "")
            fallback = field.metadata.get("fallback")
            if fallback:
                doc += f" Also read from `{fallback}`."
            rows.append((cls.env_name(field.name), _format(field.default), doc))
        return rows


def markdown_table(classes: list[type[Settings]], shared: type[Settings]) -> str:
    """One table: the settings every service has (once, as THREEGEN_<SERVICE>_*), then each one's own."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    shared_names = [f.name for f in dataclasses.fields(shared)]
    for field in dataclasses.fields(shared):
        defaults: dict[str, list[str]] = {}
        doc = field.metadata.get("doc", "")
        for cls in classes:
            own = {f.name: f for f in dataclasses.fields(cls)}[field.name]
            defaults.setdefault(_format(own.default), []).append(cls.TITLE)
        if field.metadata.get("fallback"):
            doc += f" Also read from `{field.metadata['fallback']}`."
        if len(defaults) == 1:
            shown = f"`{next(iter(defaults))}`"
        else:
            shown = ", ".join(f"{'/'.join(titles)} `{value}`" for value, titles in defaults.items())
        lines.append(f"| `THREEGEN_<SERVICE>_{field.name.upper()}` | {shown} | {doc} |")
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name in shared_names:
                continue
            doc = field.metadata.get("doc", "")
            if field.metadata.get("fallback"):
                doc += f" Also read from `{field.metadata['fallback']}`."
            default = _format(field.default)
            lines.append(
                f"| `{cls.env_name(field.name)}` | {f'`{default}`' if default else '(empty)'} | {doc} |"
            )
    return "\n".join(lines)
