"""Property-based fuzzing: validation and chunk reassembly either accept the input, within its
bounds, or refuse it with INVALID_ARGUMENT naming a field. Nothing else escapes."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.imagegen.params import validate as validate_image
from services.recon.families.triposr.family import TripoSRFamily
from services.recon.settings import ReconSettings
from services.render.params import validate_options as validate_render
from threegen.chunks import FileAssembler
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument, Violations
from threegen.imagegen.v1 import imagegen_pb2
from threegen.recon.v1 import recon_pb2
from threegen.render.v1 import render_pb2
from threegen.runtime.interceptors import Malformed, _tolerant

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
uint32 = st.integers(min_value=0, max_value=2**32 - 1)
enum = st.integers(min_value=-(2**31), max_value=2**31 - 1)  # open enums: any int32
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
text = st.text(max_size=1200)


def refused_with_fields(error: InvalidArgument) -> None:
    assert error.violations and all(field and description for field, description in error.violations)


@FUZZ
@given(
    prompt=text,
    negative=text,
    model=enum,
    steps=uint32,
    guidance=floats,
    width=uint32,
    height=uint32,
    views=uint32,
    top_k=uint32,
    ratio=floats,
    loras=st.lists(st.tuples(st.text(max_size=40), floats), max_size=10),
)
def test_imagegen_validation(
    prompt, negative, model, steps, guidance, width, height, views, top_k, ratio, loras
) -> None:
    request = imagegen_pb2.GenerateRequest(
        prompt=prompt,
        options=imagegen_pb2.ImageOptions(
            negative_prompt=negative,
            model=model,
            steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            num_views=views,
            top_k=top_k,
            foreground_ratio=ratio,
            loras=[imagegen_pb2.LoraWeight(name=n, scale=s) for n, s in loras],
        ),
    )
    try:
        params = validate_image(request, default_model="sd-turbo", max_side=1024)
    except InvalidArgument as error:
        refused_with_fields(error)
        return
    assert 1 <= params.steps <= 4 and 0 <= params.guidance_scale <= 20
    assert (
        params.width % 64 == 0 and 64 <= params.width <= 1024 and 1 <= params.top_k <= params.num_views <= 8
    )
    assert all(".." not in n and "/" not in n and -4 <= s <= 4 for n, s in params.loras)
    assert 0 < len(params.prompt) <= 1000 and 0 <= params.seed < 2**32


@FUZZ
@given(
    exports=st.lists(enum, max_size=6),
    seconds=floats,
    fps=uint32,
    resolution=uint32,
    background=st.text(max_size=12),
    elevation=st.one_of(st.none(), floats),
    thumb=st.one_of(st.none(), uint32),
    views=st.one_of(st.none(), uint32),
    ratio=st.one_of(st.none(), floats),
    limit=uint32,
    depth=st.one_of(st.none(), uint32),
)
def test_render_validation(
    exports, seconds, fps, resolution, background, elevation, thumb, views, ratio, limit, depth
) -> None:
    options = render_pb2.RenderOptions(exports=exports, texture_size_limit=limit)
    options.preview.CopyFrom(
        render_pb2.PreviewOptions(seconds=seconds, fps=fps, resolution=resolution, background=background)
    )
    if elevation is not None:
        options.preview.elevation_deg = elevation
    if thumb is not None:
        options.thumbnail.resolution = thumb
    if views is not None:
        options.contact_sheet.views = views
    if ratio is not None:
        options.simplify.ratio = ratio
    if depth is not None:
        options.reconstruct_surface.depth = depth
    try:
        plan = validate_render(options, max_frames=1200)
    except InvalidArgument as error:
        refused_with_fields(error)
        return
    preview = plan.preview
    assert preview is not None and 1 <= preview.frames <= 1200 and preview.resolution % 2 == 0
    assert math.isfinite(preview.seconds) and -89 <= preview.elevation_deg <= 89
    assert set(plan.exports) <= {"glb", "ply", "obj", "stl"}


@FUZZ
@given(resolution=uint32, ratio=floats, threshold=st.one_of(st.none(), floats))
def test_triposr_options(resolution, ratio, threshold) -> None:
    family = TripoSRFamily(ReconSettings.from_env({}), "cpu")
    options = recon_pb2.TripoSROptions(mc_resolution=resolution, foreground_ratio=ratio)
    if threshold is not None:
        options.density_threshold = threshold
    violations = Violations()
    params = family.parse_options(options, violations)
    if violations.items:
        assert all(f.startswith("options.triposr.") for f, _ in violations.items)
        return
    assert 32 <= params.mc_resolution <= 512 and 0.5 <= params.foreground_ratio <= 1
    assert 0 <= params.density_threshold <= 1000


chunk = st.builds(
    common_pb2.Chunk,
    name=st.sampled_from(["a.png", "b.png"]),
    offset=st.integers(0, 300),
    total_size=st.integers(0, 300),
    data=st.binary(max_size=120),
    last=st.booleans(),
    sha256=st.sampled_from(["", "0" * 64]),
)


@FUZZ
@given(chunks=st.lists(chunk, max_size=8), limit=st.integers(0, 400))
def test_chunk_reassembly_never_crashes(chunks, limit) -> None:
    assembler = FileAssembler("image", limit)
    try:
        for piece in chunks:
            assembler.add(piece)
        artifact = assembler.result()
    except InvalidArgument as error:
        refused_with_fields(error)
        assert all(f.startswith("image") for f, _ in error.violations)
        return
    assert len(artifact.data) <= limit


@FUZZ
@given(payload=st.binary(max_size=300))
def test_any_request_bytes_parse_or_become_invalid_argument(payload) -> None:
    from threegen.gateway.v1 import gateway_pb2

    for message_type in (gateway_pb2.GenerateRequest, recon_pb2.ReconstructRequest, render_pb2.RenderRequest):
        parsed = _tolerant(message_type.FromString)(payload)
        if isinstance(parsed, Malformed):
            try:
                parsed.raise_error()
            except InvalidArgument as error:
                assert error.violations[0][0] == "request"
        else:
            assert isinstance(parsed, message_type)
