"""Read a client stream of one params message followed by file chunks (recon, render)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from threegen.chunks import Artifact, FileAssembler
from threegen.errors import InvalidArgument


@dataclass
class Upload:
    params: Any
    files: dict[str, Artifact] = field(default_factory=dict)


async def read_upload(
    requests: AsyncIterator[Any],
    *,
    oneof: str = "part",
    params_field: str = "params",
    files: Mapping[str, int],
    idle_seconds: float = 30.0,
) -> Upload:
    """Read `params` first, then chunks of the named file fields (name -> max bytes).

    A stream that stalls for `idle_seconds` between messages is refused, so a client that
    never finishes its upload cannot hold a connection's resources forever.
    """
    iterator = requests.__aiter__()
    params = None
    assemblers = {name: FileAssembler(name, limit) for name, limit in files.items()}
    first = True
    while True:
        try:
            message = await asyncio.wait_for(iterator.__anext__(), timeout=idle_seconds)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise InvalidArgument(
                [(oneof, f"upload stalled: no message for {idle_seconds:g} s; finish the stream")]
            ) from None
        kind = message.WhichOneof(oneof)
        if kind is None:
            raise InvalidArgument([(oneof, "message has no part set")])
        if kind == params_field:
            if not first:
                raise InvalidArgument([(params_field, "must be sent once, as the first message")])
            params = getattr(message, params_field)
        elif first:
            raise InvalidArgument([(params_field, "must be the first message of the stream")])
        else:
            assemblers[kind].add(getattr(message, kind))
        first = False
    if params is None:
        raise InvalidArgument([(params_field, "the stream carried no params message")])
    upload = Upload(params)
    for name, assembler in assemblers.items():
        if assembler.total_size is not None:
            upload.files[name] = assembler.result()
    return upload
