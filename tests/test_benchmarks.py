"""The benchmark scripts still run (smallest settings) and print the ratios they promise."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "train_step.py": (["--backbone", "resnet_tiny", "--height", "64", "--width", "32", "--ids", "4",
                       "--instances", "2", "--steps", "2"], ["ratio ES-Net / baseline step time"]),
    "eval_speed.py": (["--quick", "--skip-1m", "--skip-slow-ref", "--runs", "1", "--ref-runs", "1"],
                      ["max |delta| CMC/mAP/mINP 0.0e+00", "ratio evaluation / GEMM"]),
    "eval_memory.py": (["--quick"], ["peak / budget", "largest peak / budget"]),
    "cross_domain.py": (["--models", "baseline", "--quick", "--epochs", "1", "--conditions", "none", "random:0.3",
                         "--root", "{tmp}/xd"], ["| baseline | day+dusk | ", "| day | day@random:0.3 | dusk |"]),
    "data_pipeline.py": (["--batches", "2", "--backbone", "resnet_tiny", "--height", "64", "--width", "32",
                          "--model-steps", "1", "--workers", "0"], ["ratio cache / JPEG"]),
    "image_check.py": (["--test-ids", "4", "--images-per-id", "6", "--runs", "1", "--root", "{tmp}/ic"],
                       ["ratio header check / full decode"]),
    "checkpoint_io.py": (["--backbone", "resnet_tiny", "--runs", "1"], ["load: esreid"]),
    "feature_extractor.py": (["--images", "8", "--height", "64", "--width", "32", "--batch", "4", "--workers", "0",
                              "--runs", "1"], ["max |feature - reference| 0.0e+00"]),
    "explain_speed.py": (["--height", "64", "--width", "32", "--pairs", "4", "--batch", "2", "--runs", "1"],
                         ["ratio per pair / batched"]),
    "inference.py": (["--batch", "8", "--batches", "2", "--runs", "1", "--height", "64", "--width", "32"],
                     ["ratio extraction / bare forward"]),
    "search_speed.py": (["--gallery", "2000", "--dim", "32", "--queries", "50", "--runs", "1"],
                        ["nearest neighbours agree: True"]),
    "threads.py": (["--runs", "1", "--epochs", "1", "--settings", "1", "--conditions", "as is"], ["| as is |"]),
    "cgram_shared_cue.py": (["--draws", "10"], ["| relu | eq. 2 | 3 | 0.5 |", "| gauss | eq. 5 |"]),
    "saliency_trap.py": (["--quick", "--out", "{tmp}/trap"], ["## Mechanism gate", "paired t = ", "exact Wilcoxon",
                                                              "## Verdict: ", "trap_cgram_mass.png"]),
    "ppool_exponent.py": (["--quick", "--epochs", "1", "--mults", "1", "100"], ["| 1 | 2.72 | [1.35, 5.59] |",
                                                                              "| 100 | 0 | "]),
    "saliency_feature.py": (["--epochs", "1", "--seeds", "0"], ["| retrieval | mean | "]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs(script, tmp_path):
    args, expected = CASES[script]
    args = [a.format(tmp=tmp_path) for a in args]
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)  # this checkout's esreid
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hardware:" in out.stdout and all(e in out.stdout for e in expected), out.stdout[-2000:]


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path):
    # the whole GPU suite at tiny sizes on the CPU: every part runs and the summary is printed
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable, "SUITE_OUT": str(tmp_path)}
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    for part in ("train_fp32", "train_bf16", "train_bf16_cl", "train_bf16_cl_compile", "inference", "eval", "search"):
        assert f"-- {part}: exit 0" in out.stdout
    assert "(b) ES-Net Market recipe: 120 epochs x 12,936 images" in out.stdout
    assert "gpu_suite: 0 failed part(s)" in out.stdout
