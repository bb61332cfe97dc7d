"""esreid: ES-Net and erasing methods for person and vehicle re-identification.

``from esreid import FeatureExtractor`` (features of any images from a trained model, :mod:`esreid.inference`) is
imported on first use, so ``import esreid`` stays light (no torch).
"""

__version__ = "0.1.0"

_LAZY = {"FeatureExtractor": "esreid.inference"}  # public name -> module defining it
__all__ = ["FeatureExtractor", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esreid' has no attribute {name!r}")
