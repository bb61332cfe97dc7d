#!/usr/bin/env bash
# GPU suite: what users of esreid on one GPU spend their hours on, measured in one unattended run (< 8 min on one
# H200). Needs only this repository: it installs esreid's dependencies from PyPI when they are missing (torch from
# PyPI is a CUDA build on Linux), downloads no weights and no data (random init, random images and features).
#
#   bash benchmarks/gpu_suite.sh              # on a machine with a CUDA GPU
#   bash benchmarks/gpu_suite.sh --dry-run    # tiny sizes on the CPU (CI: tests/test_benchmarks.py), no install
#
# Prints, each part's output followed by a summary:
#   (a) images/s and peak memory of BoT, ES-Net, BDB and PMM training steps at the paper's batch (16x4, ResNet-50,
#       384x128, random init) in fp32 / bf16 / bf16 + channels_last / bf16 + channels_last + compile
#       (benchmarks/train_step.py; ES-Net / BoT step ratio per setting, goal <= 2.3x);
#   (b) the projected wall time of the full ES-Net Market-1501 recipe (120 epochs x 12,936 images, 6 evaluations of
#       3,368 + 15,913 images with flip) from the fastest measured ES-Net step and extraction rates (goal <= 20 min);
#   (c) Market-size and MSMT17-size evaluation and k-reciprocal re-ranking on the GPU (benchmarks/eval_speed.py);
#   (d) exact top-k search latency on a 1M x 2048 gallery with torch on the GPU (benchmarks/search_speed.py).
# Outputs (logs, JSON) go to $SUITE_OUT (default outputs/gpu_suite). A part that fails or runs past its time limit is
# reported and the suite goes on; the exit status is the number of failed parts.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${SUITE_OUT:-outputs/gpu_suite}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
START=$(date +%s)

if [[ $DRY == 0 ]] && ! "$PY" -c "import torch, numpy, scipy, yaml, PIL, tqdm, matplotlib" >/dev/null 2>&1; then
  echo "== installing esreid's dependencies from PyPI into .venv-gpu-suite (a CUDA torch already present is kept)"
  "$PY" -m venv --system-site-packages .venv-gpu-suite || exit 90
  PY=$REPO/.venv-gpu-suite/bin/python
  grep -v '^torch==' constraints.txt > "$OUT/constraints-without-torch.txt"  # the pinned torch is a CPU build here
  "$PY" -m pip install -q -c "$OUT/constraints-without-torch.txt" -e . || exit 91
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

if [[ $DRY == 1 ]]; then
  DEVICE=cpu BACKBONE=resnet_tiny H=192 W=64 IDS=4 K=2 STEPS=1 WARMUP=1 BACKEND=aot_eager  # 12x4 maps: PMM fits
  EVAL_ARGS=(--quick --skip-1m --skip-floor --skip-slow-ref --runs 1 --ref-runs 1 --rerank)
  SEARCH_ARGS=(--gallery 20000 --dim 64 --queries 100 --runs 1)
  INFER_ARGS=(--batch 16 --batches 2 --runs 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_suite: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)'));"\
         "use --dry-run for a CPU smoke run"; exit 92; }
  DEVICE=cuda BACKBONE=resnet50 H=384 W=128 IDS=16 K=4 STEPS=5 WARMUP=2 BACKEND=inductor
  EVAL_ARGS=(--skip-1m --skip-floor --skip-slow-ref --runs 3 --ref-runs 1 --rerank --rerank-msmt)
  SEARCH_ARGS=(--gallery 1000000 --dim 2048 --queries 1000 --runs 3)
  INFER_ARGS=(--batch 256 --batches 8 --runs 3)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FAILED=0
part() {  # part NAME LIMIT_SECONDS COMMAND...: run, tee to $OUT/NAME.log, report failures and time-outs
  local name=$1 limit=$2; shift 2
  echo; echo "== $name: $*"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "-- $name: exit $rc after $(( $(date +%s) - t0 )) s"
  [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
}

# (a) training steps, one process per setting (each measures the four models side by side)
TRAIN=(benchmarks/train_step.py --device "$DEVICE" --backbone "$BACKBONE" --height "$H" --width "$W" --ids "$IDS"
       --instances "$K" --models baseline,esnet,bdb,pmm --steps "$STEPS" --warmup "$WARMUP")
part train_fp32 120 "$PY" "${TRAIN[@]}" --amp none --json "$OUT/train_fp32.json"
part train_bf16 90 "$PY" "${TRAIN[@]}" --amp bf16 --json "$OUT/train_bf16.json"
part train_bf16_cl 90 "$PY" "${TRAIN[@]}" --amp bf16 --channels-last --json "$OUT/train_bf16_cl.json"
part train_bf16_cl_compile 300 "$PY" "${TRAIN[@]}" --amp bf16 --channels-last --compile compiled \
  --compile-backend "$BACKEND" --json "$OUT/train_bf16_cl_compile.json"
# extraction rate of ES-Net for (b): eval-time settings of the recipe (bf16, channels_last, flip)
part inference 90 "$PY" benchmarks/inference.py --device "$DEVICE" --backbone "$BACKBONE" --height "$H" \
  --width "$W" --amp bf16 --channels-last "${INFER_ARGS[@]}" --json "$OUT/inference.json"
# (c) evaluation and re-ranking
part eval 150 "$PY" benchmarks/eval_speed.py --device "$DEVICE" "${EVAL_ARGS[@]}"
# (d) top-k search on a large gallery
part search 90 "$PY" benchmarks/search_speed.py --device "$DEVICE" "${SEARCH_ARGS[@]}"

# (b) and the summary
echo; echo "== summary"
"$PY" - "$OUT" <<'EOF'
import json, os, sys

out = sys.argv[1]
rows, esnet = [], {}
for setting in ("fp32", "bf16", "bf16_cl", "bf16_cl_compile"):
    path = os.path.join(out, f"train_{setting}.json")
    if not os.path.exists(path):
        print(f"(a) {setting}: no result (see {setting} above)")
        continue
    with open(path) as f:
        result = json.load(f)
    for variant, r in result.items():
        rows.append((setting, variant, r["images_per_s"], r["peak_mib"]))
        if variant.startswith("esnet"):
            esnet[setting] = r["images_per_s"]
    base = next((r for v, r in result.items() if v.startswith("baseline")), None)
    es = next((r for v, r in result.items() if v.startswith("esnet")), None)
    if base and es:
        print(f"(a) {setting:16s} ES-Net / BoT step time {es['step_s'] / base['step_s']:.2f}x (goal <= 2.3x)")
print("(a) setting          model               images/s   peak MiB")
for setting, variant, ips, peak in rows:
    print(f"    {setting:16s} {variant:18s} {ips:9.1f} {peak:10.0f}")
if esnet:
    setting, ips = max(esnet.items(), key=lambda kv: kv[1])
    train = 120 * 12936 / ips
    line = f"(b) ES-Net Market recipe: 120 epochs x 12,936 images at {ips:.1f} img/s ({setting}) = {train / 60:.1f} min"
    path = os.path.join(out, "inference.json")
    if os.path.exists(path):
        with open(path) as f:
            ext = json.load(f)["extraction_images_per_s"]
        evals = 6 * (3368 + 15913) / ext
        line += (f" + 6 evaluations' extraction at {ext:.0f} img/s (flip included) = {evals / 60:.1f} min; "
                 f"total {(train + evals) / 60:.1f} min (goal <= 20 min; data loading assumed to keep up)")
    print(line)
EOF
echo "gpu_suite: $FAILED failed part(s); $(( $(date +%s) - START )) s in all; logs in $OUT"
exit "$FAILED"
