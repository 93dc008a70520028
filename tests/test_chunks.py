"""Chunked file transfer: every rule of the stream format, and property-based round trips."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threegen.chunks import Artifact, ArtifactCollector, FileAssembler, iter_chunks
from threegen.common.v1 import common_pb2
from threegen.errors import InvalidArgument


def assemble(chunks, limit=1 << 30) -> Artifact:
    assembler = FileAssembler("image", limit)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.result()


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), size=st.integers(min_value=1, max_value=700))
def test_round_trip_any_bytes_any_chunk_size(data: bytes, size: int) -> None:
    chunks = list(iter_chunks(Artifact("x.bin", data), chunk_bytes=size))
    assert all(len(c.data) <= size for c in chunks)
    assert chunks[-1].last and chunks[-1].sha256 == hashlib.sha256(data).hexdigest()
    assert all(not c.sha256 for c in chunks[:-1])
    assert assemble(chunks).data == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=3, max_size=3000), seed=st.randoms())
def test_any_reordering_or_loss_is_refused(data: bytes, seed) -> None:
    chunks = list(iter_chunks(Artifact("x.bin", data), chunk_bytes=max(1, len(data) // 3)))
    assert len(chunks) >= 3
    mangled = list(chunks)
    if seed.random() < 0.5:
        i = seed.randrange(1, len(mangled))
        mangled[i - 1], mangled[i] = mangled[i], mangled[i - 1]
    else:
        del mangled[seed.randrange(0, len(mangled))]
    with pytest.raises(InvalidArgument):
        assemble(mangled)


def fields_of(error: InvalidArgument) -> list[str]:
    return [f for f, _ in error.violations]


def test_gap_is_named() -> None:
    chunks = list(iter_chunks(Artifact("a.png", b"0123456789"), chunk_bytes=3))
    with pytest.raises(InvalidArgument) as caught:
        assemble([chunks[0], chunks[2], chunks[3]])
    assert fields_of(caught.value) == ["image.offset"]
    assert "expected offset 3, got 6 (gap)" in caught.value.message


def test_wrong_digest_is_named() -> None:
    chunks = list(iter_chunks(Artifact("a.png", b"0123456789"), chunk_bytes=4))
    chunks[-1].sha256 = "0" * 64
    with pytest.raises(InvalidArgument) as caught:
        assemble(chunks)
    assert fields_of(caught.value) == ["image.sha256"]


def test_never_finished_stream_is_refused() -> None:
    chunks = list(iter_chunks(Artifact("a.png", b"0123456789"), chunk_bytes=4))
    with pytest.raises(InvalidArgument) as caught:
        assemble(chunks[:-1])
    assert fields_of(caught.value) == ["image.last"]


def test_size_limit_is_checked_on_the_first_chunk() -> None:
    first = common_pb2.Chunk(name="big", offset=0, total_size=10_000, data=b"x")
    with pytest.raises(InvalidArgument) as caught:
        assemble([first], limit=1000)
    assert fields_of(caught.value) == ["image.total_size"]
    assert "exceeds the limit of 1000 bytes" in caught.value.message


def test_more_bytes_than_declared_and_changing_total_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        assemble([common_pb2.Chunk(name="a", offset=0, total_size=2, data=b"abc", last=True)])
    with pytest.raises(InvalidArgument):
        assemble(
            [
                common_pb2.Chunk(name="a", offset=0, total_size=4, data=b"ab"),
                common_pb2.Chunk(name="a", offset=2, total_size=5, data=b"cd"),
            ]
        )


def test_collector_handles_interleaved_files_and_reports_unfinished() -> None:
    a = list(iter_chunks(Artifact("a.glb", b"a" * 10), chunk_bytes=4))
    b = list(iter_chunks(Artifact("b.mp4", b"b" * 10), chunk_bytes=4))
    collector = ArtifactCollector()
    for x, y in zip(a, b, strict=True):
        collector.add(x)
        collector.add(y)
    collector.check_complete()
    assert collector.finished["a.glb"].data == b"a" * 10
    assert collector.finished["b.mp4"].media_type == "video/mp4"
    unfinished = ArtifactCollector()
    unfinished.add(a[0])
    with pytest.raises(InvalidArgument, match=r"never finished: a\.glb"):
        unfinished.check_complete()


def test_relay_mode_keeps_the_senders_digest_and_still_checks_order() -> None:
    """A relay (verify=False) passes the sender's digest on without hashing; the file's consumer
    is the one that checks it. Order and size are still checked."""
    data = bytes(range(256)) * 40
    chunks = list(iter_chunks(Artifact("m.glb", data), chunk_bytes=1000))
    chunks[-1].sha256 = "ab" * 32  # a relay does not notice; the consumer will
    relay = ArtifactCollector("recon.chunk", verify=False)
    finished = [relay.add(chunk) for chunk in chunks][-1]
    assert finished is not None and finished.data == data and finished.sha256 == "ab" * 32
    unsigned = list(iter_chunks(Artifact("m.glb", data), chunk_bytes=1000))
    unsigned[-1].sha256 = ""
    collector = ArtifactCollector(verify=False)
    assert [collector.add(c) for c in unsigned][-1].sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidArgument) as caught:
        reordered = ArtifactCollector("recon.chunk", verify=False)
        for chunk in [chunks[1], chunks[0]]:
            reordered.add(chunk)
    assert fields_of(caught.value) == ["recon.chunk.offset"]
    checking = ArtifactCollector("chunk")
    with pytest.raises(InvalidArgument):
        for chunk in chunks:
            checking.add(chunk)
