"""One recon deployment per family: the gateway sends each family's requests to its own image."""

from __future__ import annotations

import io

import trimesh

from tests.conftest import gateway_service, recon_service
from tests.helpers import png_bytes
from tests.servers import serving
from tests.test_end_to_end import run_generate, small_request
from tests.test_trellis import trellis_settings
from threegen.common.v1 import common_pb2
from threegen.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from threegen.recon.v1 import recon_pb2


def test_a_routed_family_is_served_by_its_own_recon(stack, tiny_families) -> None:
    settings = {**trellis_settings(tiny_families), "families": ("trellis",), "default_family": "trellis"}
    with (
        serving(recon_service(tiny_families, **settings)) as trellis_recon,
        serving(
            gateway_service(
                stack.imagegen.address,
                stack.recon.address,  # TripoSR only
                stack.render.address,
                recon_routes=(f"trellis={trellis_recon.address}",),
            )
        ) as gateway,
    ):
        with gateway.channel() as channel:
            listed = gateway_pb2_grpc.GatewayServiceStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(), timeout=30
            )
        families = {m.family for m in listed.models if m.service == "recon"}
        assert {common_pb2.FAMILY_TRIPOSR, common_pb2.FAMILY_TRELLIS} <= families

        request = small_request(seed=70073)
        request.prompt = ""
        request.image = png_bytes(64, mode="RGBA")
        request.recon_options.CopyFrom(
            recon_pb2.ReconOptions(
                family=common_pb2.FAMILY_TRELLIS,
                trellis=recon_pb2.TrellisOptions(simplify=0.9, texture_size=256),
            )
        )
        _, files, result = run_generate(gateway.address, request)
        assert result.family == common_pb2.FAMILY_TRELLIS
        assert len(trimesh.load(io.BytesIO(files["mesh.glb"].data), file_type="glb", force="mesh").faces) > 0

        # Anything else still goes to the default deployment.
        _, _, result = run_generate(gateway.address, small_request(seed=70074))
        assert result.family == common_pb2.FAMILY_TRIPOSR
