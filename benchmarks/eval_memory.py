"""Peak extra memory of ``evaluate_rank`` from features against its ``memory_budget_mb``, on easy and hard features.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_memory.py           # the cases below, 256 / 512 MB
    PYTHONPATH=. .venv/bin/python benchmarks/eval_memory.py --quick                     # tiny sizes, a smoke run
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_memory.py --rerank --cases market  # re-ranking

Cases (features built inside the measured process, float32):

* ``hard``: 1000 queries x 200,000 gallery items (10,000 ids, 6 cameras), random 128-d Gaussian features with no
  identity signal: a query's ~17 positives sit at random ranks, so the hardest is near the end and ~94% of the
  gallery ranks before it -- the worst case for the candidate lists (every item ranked before the hardest positive);
* ``market``: Market-size 3368 x 15913, 2048-d features clustered by identity (751 ids, 6 cameras; the
  ``eval_speed.py`` generator with noise 3: mAP 0.90, ~160 candidates per query).

Method: each (case, budget) runs in a fresh process (``spawn``). It builds the features, runs a tiny evaluation (so
that lazily loaded libraries are not counted), then resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``), reads the resident set (VmRSS) as the baseline, runs the evaluation and reads the peak
(VmHWM). Peak extra memory = VmHWM - baseline: everything the evaluation touched on top of its inputs (prepared
features, distance chunks, masks, candidate lists, label tables, allocator slack, MKL's packing buffers), at page
granularity. Where clear_refs cannot be written the baseline is the peak before the evaluation (a lower bound).

``--rerank`` measures k-reciprocal re-ranking (:func:`~esreid.evaluation.rerank.re_ranking`, its dense output
included) against the same budget instead; a budget it refuses is printed as such.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import time

import numpy as np
import torch
from common import hardware
from eval_speed import synthetic

from esreid.evaluation.metrics import evaluate_rank
from esreid.evaluation.rerank import re_ranking


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def hard_case(nq, ng, dim, seed=0):
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, ng // 20, ng)
    q_pids = g_pids[rng.integers(0, ng, nq)]
    qf = rng.standard_normal((nq, dim), dtype=np.float32)
    gf = rng.standard_normal((ng, dim), dtype=np.float32)
    return qf, gf, q_pids, g_pids, rng.integers(0, 6, nq), rng.integers(0, 6, ng)


CASES = {  # name: (full-size builder, quick builder)
    "hard": (lambda: hard_case(1000, 200_000, 128), lambda: hard_case(200, 20_000, 64)),
    "market": (lambda: synthetic(3368, 15913, 751, 6, dim=2048, noise=3.0),
               lambda: synthetic(400, 2000, 100, 6, dim=256, noise=1.0)),
}


def _child(case, budget, quick, rerank, queue):
    torch.set_num_threads(1)
    qf, gf, q_pids, g_pids, q_cams, g_cams = CASES[case][quick]()
    warm = np.arange(64)
    evaluate_rank(warm[:8], warm % 8, np.zeros(8, np.int64), np.ones(64, np.int64), qf=qf[:8], gf=gf[:64])
    if rerank:
        re_ranking(qf[:8], gf[:64])
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base, exact = _status_mb("VmRSS"), True
    except OSError:
        base, exact = _status_mb("VmHWM"), False
    t = time.perf_counter()
    if rerank:
        try:
            re_ranking(qf, gf, memory_budget_mb=budget)
        except ValueError as e:  # RerankMemoryError: refused before any work
            queue.put((len(qf), len(gf), qf.shape[1], float("nan"), exact, time.perf_counter() - t, str(e), None))
            return
        m_ap = m_inp = float("nan")
    else:
        r = evaluate_rank(q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf, memory_budget_mb=budget)
        m_ap, m_inp = r.mAP, r.mINP
    elapsed = time.perf_counter() - t
    queue.put((len(qf), len(gf), qf.shape[1], _status_mb("VmHWM") - base, exact, elapsed, m_ap, m_inp))


def measure(case, budget, quick, rerank=False):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(case, budget, quick, rerank, queue))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"eval_memory: the {case} / {budget} MB process failed (exit code {p.exitcode})")
    return queue.get()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; the ratios mean little)")
    ap.add_argument("--budgets", type=float, nargs="+", help="MB (default: 256 512; --quick: 16 32)")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--rerank", action="store_true", help="measure k-reciprocal re-ranking instead")
    args = ap.parse_args()
    budgets = args.budgets or ([16, 32] if args.quick else [256, 512])
    print("hardware:", hardware())
    print(f"{'case':8s} {'Nq x Ng, D':>22s} {'budget MB':>10s} {'peak extra MB':>14s} {'peak / budget':>14s} "
          f"{'time s':>7s} {'mAP':>7s} {'mINP':>7s}")
    worst = 0.0
    for case in args.cases:
        for budget in budgets:
            nq, ng, dim, peak, exact, elapsed, m_ap, m_inp = measure(case, budget, args.quick, args.rerank)
            if isinstance(m_ap, str):
                print(f"{case:8s} {f'{nq} x {ng}, {dim}':>22s} {budget:10.0f}  refused: {m_ap}")
                continue
            worst = max(worst, peak / budget)
            print(f"{case:8s} {f'{nq} x {ng}, {dim}':>22s} {budget:10.0f} {peak:14.1f} {peak / budget:14.2f} "
                  f"{elapsed:7.2f} {m_ap:7.4f} {m_inp:7.4f}" + ("" if exact else "  (baseline: earlier peak)"))
    print(f"largest peak / budget: {worst:.2f}")


if __name__ == "__main__":
    main()
