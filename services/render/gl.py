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
