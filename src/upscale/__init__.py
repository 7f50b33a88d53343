"""upscale: single-image super-resolution with the SRGAN/ESRGAN family.

Public API: ``load_model``, ``upscale_image``, ``Upscaler`` (see ``upscale.api``), and the I/O
record ``Image`` with ``read_image`` / ``write_image``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("upscale")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "load_model", "upscale_image", "Upscaler", "Image", "read_image", "write_image"]


def __getattr__(name: str):
    # Imported lazily so `import upscale` stays light (no torch) for tools that only need the version.
    if name in ("load_model", "upscale_image", "Upscaler"):
        from . import api
        return getattr(api, name)
    if name in ("Image", "read_image", "write_image"):
        from . import io
        return getattr(io, name)
    raise AttributeError(name)
