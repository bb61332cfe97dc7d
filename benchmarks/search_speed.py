"""Exact top-k search of a large gallery with torch on any device (a GPU: the figure ``esreid search`` users with big
galleries need), against a bare ``torch.topk`` on the same distances, measured in the same run.

    .venv/bin/python benchmarks/search_speed.py --device cuda                       # 1M x 2048 gallery, 1000 queries
    .venv/bin/python benchmarks/search_speed.py --gallery 20000 --dim 128           # CPU-sized

Gallery and queries: random unit vectors made on the device (the cosine metric of ES-Net / BoT). Per chunk of
``--chunk`` queries: esreid's cosine distances (``METRICS["cosine"]``: one ``addmm``) and
:func:`esreid.evaluation.distance.smallest_k` (exact, ties by gallery index), against the same distances followed by a
plain ``torch.topk`` (ties in any order). Alternating passes over all queries, medians; prints ms per query, queries/s
and the ratio. faiss on the CPU is measured by ``benchmarks/eval_speed.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import hardware

from esreid.evaluation.distance import METRICS, smallest_k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ES-Net: 2048 per branch)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--chunk", type=int, default=100, help="queries per distance block")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    cosine = METRICS.get("cosine")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    gallery = cosine.prepare(torch.randn(args.gallery, args.dim, device=device, generator=gen))
    queries = cosine.prepare(torch.randn(args.queries, args.dim, device=device, generator=gen))
    sync()
    made = time.perf_counter() - t0

    def search(exact: bool) -> torch.Tensor:
        out = []
        for s in range(0, args.queries, args.chunk):
            d = cosine.distance(queries.rows(s, s + args.chunk), gallery)
            out.append(smallest_k(d, args.k) if exact else torch.topk(d, args.k, dim=1, largest=False).indices)
        return torch.cat(out)

    print(f"hardware: {hardware(device)}")
    print(f"gallery {args.gallery} x {args.dim} float32 ({args.gallery * args.dim * 4 / 2**30:.2f} GiB, made and "
          f"normalised in {made:.2f} s), {args.queries} queries in chunks of {args.chunk}, k={args.k}, cosine")
    search(True), search(False)  # warm-up
    times = {"esreid smallest_k": [], "torch.topk": []}
    same = True
    for _ in range(args.runs):
        for name, exact in (("esreid smallest_k", True), ("torch.topk", False)):
            sync()
            t0 = time.perf_counter()
            idx = search(exact)
            sync()
            times[name].append(time.perf_counter() - t0)
            if exact:
                found = idx
        same &= bool((found[:, 0] == idx[:, 0]).float().mean() > 0.99)  # nearest neighbours agree (ties aside)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:18s}: {1000 * t / args.queries:8.3f} ms/query ({args.queries / t:10.1f} queries/s; "
              f"runs {', '.join(f'{x:.3f}' for x in times[name])} s)")
    print(f"ratio esreid / torch.topk: {med['esreid smallest_k'] / med['torch.topk']:.2f}x; nearest neighbours agree: "
          f"{same}")


if __name__ == "__main__":
    main()
