"""Pick pyrender's offscreen platform before OpenGL is imported: EGL on GPU machines, OSMesa on CPU."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path


def choose_platform(preference: str = "auto") -> str:
    """Set PYOPENGL_PLATFORM (unless the environment already does) and return it."""
    # pyrender imports pyglet's window module, which needs X11 unless pyglet runs headless
    # (on EGL): GPU nodes and slim containers have no X libraries.
    if ctypes.util.find_library("EGL"):
        os.environ.setdefault("PYGLET_HEADLESS", "true")
    explicit = os.environ.get("PYOPENGL_PLATFORM")
    if explicit:
        return explicit
    if preference != "auto":
        platform = preference
    elif Path("/dev/nvidiactl").exists() or Path("/dev/dri/renderD128").exists():
        platform = "egl"
    elif ctypes.util.find_library("OSMesa"):
        platform = "osmesa"
    else:
        platform = "egl"
    os.environ["PYOPENGL_PLATFORM"] = platform
    return platform


def read_color_only(offscreen: object) -> None:
    """Make a pyrender OffscreenRenderer read back colour alone.

    pyrender (0.1.45) always reads the depth buffer too and linearises it with several numpy
    passes, then hands it back for us to drop; at 512 px that is about a third of a frame's
    cost. The replacement keeps pyrender's own steps (resolve the multisampled framebuffer,
    read RGB, flip) minus the depth. Platforms without framebuffer objects keep the original.
    """
    import numpy as np
    from OpenGL import GL

    inner = offscreen._renderer  # type: ignore[attr-defined]
    if not offscreen._platform.supports_framebuffers():  # type: ignore[attr-defined]
        return

    def read(scene: object, flags: int) -> tuple[np.ndarray, None]:
        width, height = inner._main_fb_dims
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, inner._main_fb_ms)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, inner._main_fb)
        GL.glBlitFramebuffer(0, 0, width, height, 0, 0, width, height, GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, inner._main_fb)
        buffer = GL.glReadPixels(0, 0, width, height, GL.GL_RGB, GL.GL_UNSIGNED_BYTE)
        color = np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
        return color[::-1], None

    inner._read_main_framebuffer = read
