"""Cost of checking every test image before training (:func:`esreid.engine.preflight.check_test_data`): the header
check (:func:`esreid.data.transforms.check_image_header`) of a Market-size test set of synthetic JPEGs, against fully
decoding the same files (:func:`esreid.data.transforms.decode_resize`), the two alternating, medians.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_check.py                 # 19,000-odd test images
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_check.py --test-ids 20   # a smoke run

The synthetic dataset (128x64, Market-1501's image size) is generated once into ``--root`` and reused; Market-1501's
test set is 3,368 query + 15,913 gallery = 19,281 images (with 2,793 distractors). The first pass warms the page
cache, so both are measured from memory (a cold disk adds the same reads to both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from common import hardware

from esreid.data.datasets.synthetic import SyntheticMarket
from esreid.data.transforms import check_image_header, decode_resize


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "esreid_image_check"))
    ap.add_argument("--test-ids", type=int, default=750)
    ap.add_argument("--images-per-id", type=int, default=22)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print("hardware:", hardware(), "| load average:", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    t = time.perf_counter()
    ds = SyntheticMarket(args.root, verbose=False, num_train_ids=4, num_test_ids=args.test_ids,
                         images_per_id=args.images_per_id, num_junk=0, num_distractors=2793 * args.test_ids // 750)
    paths = [it.path for it in ds.query + ds.gallery]
    print(f"{len(paths)} test images at 128x64 ({len(ds.query)} query, {len(ds.gallery)} gallery) in {args.root} "
          f"({time.perf_counter() - t:.1f} s to generate or find)")
    for p in paths:  # warm the page cache
        check_image_header(p)
    times = {"header check": [], "full decode": []}
    for _ in range(args.runs):
        for name, fn in (("header check", lambda p: check_image_header(p)),
                         ("full decode", lambda p: decode_resize(p, 128, 64))):
            t = time.perf_counter()
            for p in paths:
                fn(p)
            times[name].append(time.perf_counter() - t)
    for name, runs in times.items():
        med = statistics.median(runs)
        print(f"{name:13s} median {med:6.2f} s ({med / len(paths) * 1e6:6.0f} us per image); runs "
              + ", ".join(f"{r:.2f}" for r in runs))
    ratio = statistics.median(times["header check"]) / statistics.median(times["full decode"])
    print(f"ratio header check / full decode: {ratio:.2f}")


if __name__ == "__main__":
    main()
