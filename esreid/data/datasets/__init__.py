"""Dataset loaders; importing this package registers every one of them in ``esreid.data.base.DATASETS``."""

from esreid.data.datasets import (  # noqa: F401
    cuhk03,
    custom,
    dukemtmc,
    market1501,
    msmt17,
    occluded_duke,
    synthetic,
    vehicleid,
    veri776,
)
