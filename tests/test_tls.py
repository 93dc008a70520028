"""TLS end to end: client -> gateway over TLS, gateway -> every backend over mTLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.certs import make_pki
from tests.conftest import gateway_service, imagegen_service, recon_service, render_service
from tests.servers import serving
from tests.test_end_to_end import small_request
from threegen import client
from threegen.recon.v1 import recon_pb2, recon_pb2_grpc


def test_tls_and_mtls_on_every_hop(tiny, tmp_path) -> None:
    pki = make_pki(tmp_path)
    server_cert, server_key = pki["server"]
    client_cert, client_key = pki["client"]
    mtls = {"tls_cert": server_cert, "tls_key": server_key, "tls_client_ca": pki["ca"]}
    with (
        serving(imagegen_service(tiny, **mtls)) as imagegen,
        serving(recon_service(tiny, **mtls)) as recon,
        serving(render_service(**mtls)) as render,
        serving(
            gateway_service(
                f"localhost:{imagegen.instance.port}",
                f"localhost:{recon.instance.port}",
                f"localhost:{render.instance.port}",
                tls_cert=server_cert,
                tls_key=server_key,
                backend_tls_ca=pki["ca"],
                backend_tls_cert=client_cert,
                backend_tls_key=client_key,
            )
        ) as gateway,
    ):
        secure = client.Connection(f"localhost:{gateway.instance.port}", tls_ca=pki["ca"])
        outcome = client.generate(secure, small_request(), timeout=120)
        assert outcome.result.stats.face_count > 0 and "mesh.glb" in outcome.artifacts

        with pytest.raises(grpc.RpcError) as caught:  # plaintext to a TLS port
            client.generate(
                client.Connection(f"localhost:{gateway.instance.port}"), small_request(), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        # A backend refuses a TLS client without a certificate from the CA (mTLS).
        credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
        with grpc.secure_channel(f"localhost:{recon.instance.port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                recon_pb2_grpc.ReconServiceStub(channel).ListModels(recon_pb2.ListModelsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
