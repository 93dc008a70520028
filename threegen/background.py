"""Background removal with rembg, shared by imagegen and recon.

The session is made on first use from a local u2net-format ONNX file (rembg's u2net_custom
session) or, on a networked machine, from a named rembg model fetched into U2NET_HOME.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from PIL import Image

from threegen.errors import Unavailable
from threegen.images import resize_foreground

log = logging.getLogger("threegen.background")


class BackgroundRemover:
    def __init__(self, model_path: str = "", model_name: str = "u2net"):
        self.model_path = model_path
        self.model_name = model_name
        self._session: object | None = None
        self._lock = threading.Lock()
        self.error = ""

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def memory_bytes(self) -> int:
        return 0  # an ONNX Runtime session on the CPU

    @property
    def source(self) -> str:
        return self.model_path or f"rembg:{self.model_name}"

    def session(self) -> object:
        with self._lock:
            if self._session is None:
                try:
                    from rembg import new_session

                    if self.model_path:
                        path = Path(self.model_path).expanduser().resolve()
                        if not path.is_file():
                            raise FileNotFoundError(f"no ONNX file at {self.model_path}")
                        # rembg loads custom models only from inside its model home.
                        home_variable = "U2NET_HOME" if os.environ.get("U2NET_HOME") else "REMBG_HOME"
                        os.environ[home_variable] = str(path.parent)
                        self._session = new_session("u2net_custom", model_path=str(path))
                    else:
                        self._session = new_session(self.model_name)
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
                    raise Unavailable(f"background removal is not available ({self.error})") from exc
                self.error = ""
                log.info("background removal ready (%s)", self.source)
            return self._session

    def remove(self, image: Image.Image) -> Image.Image:
        """RGB(A) -> RGBA with the background transparent."""
        from rembg import remove

        return remove(image.convert("RGB"), session=self.session())

    def cutout(self, image: Image.Image, foreground_ratio: float) -> Image.Image:
        """The object alone, centred and padded so it spans foreground_ratio of the square."""
        return resize_foreground(self.remove(image), foreground_ratio)
