"""Dataset loaders; importing this package registers every one of them in ``esreid.data.base.DATASETS``."""

from esreid.data.datasets import market1501  # noqa: F401
