"""Download the weights a service's settings name into HF_HOME (on a machine with a network),
for `docker build --build-arg BAKE_WEIGHTS=true` or to warm a shared model volume.

    python -m threegen.fetch_weights imagegen|recon|all
"""

from __future__ import annotations

import argparse
import sys

from threegen.weights import WeightsNotFound, resolve


def sources(service: str) -> list[tuple[str, str, list[str] | None]]:
    """(setting name, source, file patterns or None for all) a service will load."""
    found: list[tuple[str, str, list[str] | None]] = []
    if service in ("imagegen", "all"):
        from services.imagegen.settings import ImageGenSettings

        s = ImageGenSettings.from_env()
        for name in s.preload:
            field = "sd_turbo_model" if name == "sd-turbo" else "sdxl_turbo_model"
            found.append((s.env_name(field), getattr(s, field), None))
        found.append((s.env_name("clip_model"), s.clip_model, None))
    if service in ("recon", "all"):
        from services.recon.settings import ReconSettings

        r = ReconSettings.from_env()
        if "triposr" in r.families:
            found.append((r.env_name("triposr_model"), r.triposr_model, None))
            found.append(("TripoSR image tokenizer config", "facebook/dino-vitb16", ["*.json"]))
        if "trellis" in r.families:
            found.append((r.env_name("trellis_model"), r.trellis_model, None))
            if r.trellis_text_model:
                found.append((r.env_name("trellis_text_model"), r.trellis_text_model, None))
                clip = r.trellis_clip or "openai/clip-vit-large-patch14"
                found.append((r.env_name("trellis_clip"), clip, ["*.json", "*.txt", "*.safetensors"]))
        if "hunyuan3d" in r.families:
            # The repository holds several shape variants: only the configured one, plus paint.
            shape = [f"{r.hunyuan3d_subfolder}/*"]
            paint = ["hunyuan3d-delight-v2-0/*", "hunyuan3d-paint-v2-0/*"] if r.hunyuan3d_paint_model else []
            if r.hunyuan3d_paint_model == r.hunyuan3d_model:
                shape += paint
            elif paint:
                found.append((r.env_name("hunyuan3d_paint_model"), r.hunyuan3d_paint_model, paint))
            found.append((r.env_name("hunyuan3d_model"), r.hunyuan3d_model, shape))
        if "sam3d" in r.families:  # gated: `huggingface-cli login` or HF_TOKEN first
            found.append((r.env_name("sam3d_model"), r.sam3d_model, ["checkpoints/*"]))
            found.append((r.env_name("sam3d_moge"), r.sam3d_moge or "Ruicheng/moge-vitl", ["model.pt"]))
        if "xcube" in r.families:  # the checkpoints themselves are not on Hugging Face (see its README)
            found.append((r.env_name("xcube_text_encoder"), r.xcube_text_encoder, ["text_encoder/*"]))
            found.append((r.env_name("xcube_tokenizer"), r.xcube_tokenizer, ["*.json", "*.txt"]))
    return found


def fetch_dinov2() -> None:
    """TRELLIS's DINOv2 weights come from torch.hub's download site, into $TORCH_HOME."""
    import torch

    from services.recon import dinov2

    target = dinov2.hub_checkpoint()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(DINOV2_URL, str(target))
    print(f"DINOv2: {target}")


DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=["imagegen", "recon", "all"])
    args = parser.parse_args(argv)
    failed = 0
    for setting, source, patterns in sources(args.service):
        try:
            folder = resolve(source, setting=setting, allow_patterns=patterns)
            print(f"{setting}: {source} -> {folder}")
        except WeightsNotFound as exc:
            failed += 1
            print(f"{setting}: {exc}", file=sys.stderr)
    if args.service in ("recon", "all"):
        from services.recon.settings import ReconSettings

        settings = ReconSettings.from_env()
        if "trellis" in settings.families and not settings.trellis_dinov2:
            try:
                fetch_dinov2()
            except Exception as exc:
                failed += 1
                print(f"DINOv2: {exc}", file=sys.stderr)
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
