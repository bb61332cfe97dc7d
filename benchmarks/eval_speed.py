"""Evaluation speed and memory: esreid's chunked evaluator vs a per-query numpy reference and vs the bare distance
GEMM, measured in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_speed.py    # Market + floor + MSMT17 + 1M faiss
    PYTHONPATH=. .venv/bin/python benchmarks/eval_speed.py --quick              # smaller problems, for a smoke run
    PYTHONPATH=. .venv/bin/python benchmarks/eval_speed.py --skip-1m --skip-msmt --profile

(``PYTHONPATH=.`` makes the script use this checkout's ``esreid`` rather than the installed one.)

1. Market-size (3368 x 15913, 751 ids, 6 cameras, synthetic 128-d features with identity signal): the same float32
   distance matrix goes to ``evaluate_rank`` and to ``reference_eval`` (per query: stable argsort, junk removal,
   cumsum; the definitions of docs/methods.md §0 written directly in numpy). Prints median times, the ratio and max
   |delta|.
2. The floor: Market-size from 2048-d features clustered by identity (noise 3: mAP ~0.9), one thread. Every
   (query, gallery) pair needs its dot product, so the bare GEMM ``q @ g.T`` (float32, into fresh memory) is the
   floor; the full evaluation (normalisation, distances, ranking, metrics) is timed alternately with it and the
   ratio of the medians printed. ``--profile`` adds a cProfile of one evaluation (where the time above the GEMM goes).
3. MSMT17-size (11659 x 82161, 3060 ids, 15 cameras) from features, never materialising the distance matrix:
   time and peak RSS of the process (run in a child process so the Market step does not count).
4. A 1M-image synthetic gallery indexed with faiss (flat = exact, IVF, HNSW): build time, query latency, recall@k of the
   approximate indexes against the flat one.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pstats
import statistics
import time

import numpy as np
import torch
from common import hardware, peak_rss_mb

from esreid.evaluation.metrics import evaluate_rank
from esreid.evaluation.rerank import re_ranking


def synthetic(num_q, num_g, num_ids, num_cams, dim=128, noise=1.45, seed=0):
    """Features = per-id centre + Gaussian noise; every id has >= 2 gallery images; queries come from gallery ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    g_pids = np.concatenate([np.repeat(np.arange(num_ids), 2), rng.integers(0, num_ids, num_g - 2 * num_ids)])
    q_pids = rng.integers(0, num_ids, num_q)
    gf = centres[g_pids] + noise * rng.normal(size=(num_g, dim)).astype(np.float32)
    qf = centres[q_pids] + noise * rng.normal(size=(num_q, dim)).astype(np.float32)
    return qf, gf, q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


def reference_eval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50, python_precision=False):
    """Straightforward per-query numpy implementation of the definitions (CMC, AP = mean precision at hits,
    INP = R / rank of the last hit; junk = same pid and camera; queries without a match skipped).

    ``python_precision=True`` computes the precision at every rank with a Python list comprehension, the way the
    torchreid's and fast-reid's pure-Python evaluators do; otherwise with numpy (tight reference).
    """
    cmc_sum, aps, inps = np.zeros(max_rank), [], []
    for q in range(dist.shape[0]):
        order = np.argsort(dist[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))
        hits = (g_pids[order][keep] == q_pids[q]).astype(np.float64)
        if not hits.any():
            continue
        ks = np.flatnonzero(hits) + 1
        cmc_sum += np.arange(1, max_rank + 1) >= ks[0]
        if python_precision:
            precision = np.asarray([x / (r + 1.0) for r, x in enumerate(hits.cumsum())])
            aps.append(float((precision * hits).sum() / hits.sum()))
        else:
            aps.append(np.mean(np.arange(1, len(ks) + 1) / ks))
        inps.append(len(ks) / ks[-1])
    return cmc_sum / len(aps), float(np.mean(aps)), float(np.mean(inps))


def median_time(fn, runs):
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def bench_market(args):
    nq, ng = (842, 3978) if args.quick else (3368, 15913)
    qf, gf, q_pids, g_pids, q_cams, g_cams = synthetic(nq, ng, 751 if not args.quick else 188, 6)
    dist = evaluate_rank  # keep the name short below
    dm = (1 - torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
          @ torch.nn.functional.normalize(torch.from_numpy(gf), dim=1).T).numpy()
    t_ours, runs_ours, ours = median_time(lambda: dist(q_pids, g_pids, q_cams, g_cams, distmat=dm), args.runs)
    t_feat, _, feat = median_time(lambda: dist(q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf), args.runs)
    print(f"\n== Market-size {nq} x {ng} (distmat float32 given to all) ==")
    print(f"esreid evaluate_rank                   : median {t_ours:8.3f} s  runs {[round(t, 3) for t in runs_ours]}")
    refs = [("per-query numpy, numpy precision", False, args.ref_runs)]
    if not args.skip_slow_ref:
        refs.append(("per-query numpy, Python precision", True, 1))
    for label, python_precision, runs in refs:
        t_ref, runs_ref, ref = median_time(
            lambda p=python_precision: reference_eval(dm, q_pids, g_pids, q_cams, g_cams, python_precision=p), runs)
        delta = max(np.abs(ours.cmc - ref[0]).max(), abs(ours.mAP - ref[1]), abs(ours.mINP - ref[2]))
        print(f"reference {label:29s}: median {t_ref:8.3f} s  runs {[round(t, 3) for t in runs_ref]}  "
              f"-> speed-up {t_ref / t_ours:6.1f} x; max |delta| CMC/mAP/mINP {delta:.1e}")
    print(f"from features (128-d, incl. distances): median {t_feat:.3f} s; same result: "
          f"{np.array_equal(feat.cmc, ours.cmc) and feat.mAP == ours.mAP}")
    print(f"mAP {ours.mAP:.4f}  mINP {ours.mINP:.4f}  R1 {ours.cmc[0]:.4f}  R5 {ours.cmc[4]:.4f}")
    if args.rerank:
        t = time.perf_counter()
        rr = dist(q_pids, g_pids, q_cams, g_cams, distmat=re_ranking(qf, gf))
        print(f"k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) + evaluation: {time.perf_counter() - t:.2f} s; "
              f"mAP {rr.mAP:.4f}  R1 {rr.cmc[0]:.4f}")


def bench_floor(args):
    nq, ng, ids = (842, 3978, 188) if args.quick else (3368, 15913, 751)
    qf, gf, q_pids, g_pids, q_cams, g_cams = synthetic(nq, ng, ids, 6, dim=2048, noise=3.0)
    qt, gt = torch.from_numpy(qf), torch.from_numpy(gf)
    evaluate = lambda: evaluate_rank(q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf)  # noqa: E731
    warm = torch.mm(qt, gt.T)  # written once: its pages are mapped
    fns = {"gemm": lambda: qt @ gt.T, "warm": lambda: torch.mm(qt, gt.T, out=warm), "eval": evaluate}
    times = {k: [] for k in fns}
    for _ in range(args.runs):  # alternating, so that all see the same machine load
        for key, fn in fns.items():
            t = time.perf_counter()
            out = fn()
            times[key].append(time.perf_counter() - t)
    gemm, warm_gemm, full = (statistics.median(times[k]) for k in fns)
    print(f"\n== floor: Market-size {nq} x {ng} from 2048-d features, torch threads {torch.get_num_threads()} ==")
    for key, label in (("gemm", "bare GEMM q @ g.T (fresh output)"), ("warm", "GEMM into a written buffer"),
                       ("eval", "evaluate_rank(qf=, gf=), cosine")):
        t = times[key]
        print(f"{label:35s}: median {statistics.median(t):7.3f} s  runs {[round(x, 3) for x in t]}")
    print(f"ratio evaluation / GEMM {full / gemm:.3f} (goal <= 1.15); evaluation / GEMM into a written buffer "
          f"{full / warm_gemm:.3f}; mAP {out.mAP:.4f}  mINP {out.mINP:.4f}  R1 {out.cmc[0]:.4f}")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(evaluate)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def _msmt_child(quick, queue):
    nq, ng, ids = (2915, 20540, 765) if quick else (11659, 82161, 3060)
    qf, gf, q_pids, g_pids, q_cams, g_cams = synthetic(nq, ng, ids, 15, seed=1)
    rss_before = peak_rss_mb()
    t = time.perf_counter()
    r = evaluate_rank(q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf)
    elapsed = time.perf_counter() - t
    peak = peak_rss_mb()
    queue.put((nq, ng, elapsed, rss_before, peak, r.mAP, r.cmc[0]))


def bench_msmt(args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_msmt_child, args=(args.quick, queue))
    p.start()
    nq, ng, elapsed, rss0, peak, m_ap, r1 = queue.get()
    p.join()
    print(f"\n== MSMT17-size {nq} x {ng} from 128-d features (fresh process, default 512 MB budget) ==")
    print(f"time {elapsed:.2f} s (goal <= 15 s); peak RSS {peak:.0f} MB (goal <= 2048 MB; {rss0:.0f} MB after "
          f"building the synthetic features); full float32 distmat would be {nq * ng * 4 / 2**20:.0f} MB")
    print(f"mAP {m_ap:.4f}  R1 {r1:.4f}")


def bench_faiss(args):
    from esreid.evaluation.search import GalleryIndex

    ng = 100_000 if args.quick else 1_000_000
    nq, dim, k = 1000, 128, 10
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(ng // 20, dim)).astype(np.float32)
    gf = np.empty((ng, dim), np.float32)
    for s in range(0, ng, 100_000):
        e = min(s + 100_000, ng)
        gf[s:e] = centres[rng.integers(0, len(centres), e - s)] + 0.5 * rng.normal(size=(e - s, dim)).astype(np.float32)
    qf = centres[rng.integers(0, len(centres), nq)] + 0.5 * rng.normal(size=(nq, dim)).astype(np.float32)
    print(f"\n== faiss search: {ng} gallery x {nq} queries, {dim}-d, cosine, k={k} ==")
    exact = None
    settings = {"flat": {}, "ivf": {"nprobe": 32}, "hnsw": {"hnsw_m": 16, "ef_search": 128}}
    for kind, params in settings.items():
        index = GalleryIndex(kind=kind, metric="cosine", **params)
        t = time.perf_counter()
        index.add(gf)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        _, idx = index.search(qf, k)
        t_search = time.perf_counter() - t
        if exact is None:
            exact = idx
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, exact)])
        print(f"{kind:5s} {params}: build {t_build:7.2f} s  search {t_search * 1000 / nq:8.3f} ms/query "
              f"({t_search:6.2f} s total)  recall@{k} vs flat {recall:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quarter-size problems and a 100k gallery")
    ap.add_argument("--skip-msmt", action="store_true")
    ap.add_argument("--skip-1m", action="store_true", help="skip the faiss large-gallery part")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref-runs", type=int, default=3)
    ap.add_argument("--rerank", action="store_true", help="also time re-ranking on the Market-size problem")
    ap.add_argument("--skip-slow-ref", action="store_true", help="skip the ~50 s Python-precision reference")
    ap.add_argument("--skip-floor", action="store_true", help="skip the evaluation / GEMM ratio")
    ap.add_argument("--profile", action="store_true", help="cProfile one evaluation of the floor problem")
    args = ap.parse_args()
    print("hardware:", hardware())
    bench_market(args)
    if not args.skip_floor:
        bench_floor(args)
    if not args.skip_msmt:
        bench_msmt(args)
    if not args.skip_1m:
        bench_faiss(args)


if __name__ == "__main__":
    main()
