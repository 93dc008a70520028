"""Download the weights a service's settings name into HF_HOME (on a machine with a network),
for `docker build --build-arg BAKE_WEIGHTS=true` or to warm a shared model volume.

    python -m threegen.fetch_weights imagegen|recon|all
"""

from __future__ import annotations

import argparse
import sys

from threegen.weights import WeightsNotFound, resolve


def sources(service: str) -> list[tuple[str, str]]:
    """(setting name, source) pairs a service will load."""
    found: list[tuple[str, str]] = []
    if service in ("imagegen", "all"):
        from services.imagegen.settings import ImageGenSettings

        s = ImageGenSettings.from_env()
        for name in s.preload:
            field = "sd_turbo_model" if name == "sd-turbo" else "sdxl_turbo_model"
            found.append((s.env_name(field), getattr(s, field)))
        found.append((s.env_name("clip_model"), s.clip_model))
    if service in ("recon", "all"):
        from services.recon.settings import ReconSettings

        r = ReconSettings.from_env()
        if "triposr" in r.families:
            found.append((r.env_name("triposr_model"), r.triposr_model))
            found.append(("TripoSR image tokenizer config", "facebook/dino-vitb16"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=["imagegen", "recon", "all"])
    args = parser.parse_args(argv)
    failed = 0
    for setting, source in sources(args.service):
        try:
            folder = resolve(source, setting=setting)
            print(f"{setting}: {source} -> {folder}")
        except WeightsNotFound as exc:
            failed += 1
            print(f"{setting}: {exc}", file=sys.stderr)
    if args.service in ("imagegen", "recon", "all"):
        try:  # rembg fetches its default model (u2net) into U2NET_HOME on first use
            from rembg import new_session

            new_session("u2net")
            print("rembg: u2net ready")
        except Exception as exc:
            failed += 1
            print(f"rembg: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
