"""Registry of recon families: name -> where its Family class lives (imported when enabled)."""

from __future__ import annotations

import importlib

from threegen.common.v1 import common_pb2

REGISTRY = {
    "triposr": ("services.recon.families.triposr.family", "TripoSRFamily", common_pb2.FAMILY_TRIPOSR),
    "trellis": ("services.recon.families.trellis.family", "TrellisFamily", common_pb2.FAMILY_TRELLIS),
    "hunyuan3d": ("services.recon.families.hunyuan3d.family", "Hunyuan3DFamily", common_pb2.FAMILY_HUNYUAN3D),
    "sam3d": ("services.recon.families.sam3d.family", "Sam3dFamily", common_pb2.FAMILY_SAM3D),
    "xcube": ("services.recon.families.xcube.family", "XCubeFamily", common_pb2.FAMILY_XCUBE),
}

NAME_BY_ENUM = {enum: name for name, (_, _, enum) in REGISTRY.items()}


def family_class(name: str) -> type:
    module, attr, _ = REGISTRY[name]
    return getattr(importlib.import_module(module), attr)
