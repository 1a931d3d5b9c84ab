#!/usr/bin/env bash
# The one GPU check, for a machine with an NVIDIA GPU (H100, sm_90): build in place with the CUDA
# kernels, run the CUDA tests, then time the kernels on the same GPU (float32): first the
# GPU-only targets (exp-throughput floor, where a call's time goes, LAP at B=256), then
# bench_ops.py --device cuda against the baselines, then Deep-Align against weight matching.
# Logs go to $OUT (or /tmp/deepalign-gpu-out).
#   bash benchmarks/gpu_check.sh [--skip-build] [--skip-tests] [--skip-other-tests]
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/deepalign-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
# A C++ error raised by the extension must come back as a Python RuntimeError.
errors_ok() {
  timeout 60 $PY -X faulthandler -c "
import torch, deepalign.ops
for dev in ['cpu', 'cuda']:
    try:
        torch.ops.deepalign.linear_assignment(torch.full((1, 2, 2), float('nan'), device=dev), False)
    except RuntimeError as e:
        assert 'NaN' in str(e), e
print('C++ errors reach Python')" >"$OUT/errors.log" 2>&1
}
build() {
  rm -rf build deepalign/_C*.so
  TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS=16 $PY setup.py build_ext --inplace \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; return 1; }
  grep -E "deepalign setup" "$OUT/build.log"
}
if [[ " $* " != *" --skip-build "* ]]; then
  step build
  # The image's default CC/CXX (/opt/gcc) links its own libstdc++ into _C.so, and any C++ error
  # then segfaults (benchmarks/RESULTS.md, "Build note"): build with the system compiler when
  # there is one; errors_ok checks the result.
  if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
  # the toolkit root, asked of nvcc itself (robust to wrapper scripts on PATH)
  export CUDA_HOME=${CUDA_HOME:-$(realpath "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 \
    | sed -n 's/^#\$ _HERE_=//p')/..")}
  echo "CC=${CC:-} CXX=${CXX:-}; $(${CXX:-c++} --version | head -1); torch built with:" \
    "$($PY -c 'import torch; print(torch.__config__.show().splitlines()[1].strip())')"
  build || exit 1
  if ! errors_ok; then  # where the C++ error crashed, for the record
    tail -5 "$OUT/errors.log"
    timeout 30 cuda-gdb -batch -ex run -ex bt --args $PY -c "import torch, deepalign.ops
torch.ops.deepalign.linear_assignment(torch.full((1, 2, 2), float('nan')), False)" \
      >"$OUT/gdb.log" 2>&1; grep -E "^#[0-9]" "$OUT/gdb.log" | cut -c1-160 | head -14
  fi
  cat "$OUT/errors.log" | tail -3
fi
# pytest-xdist, where installed: parallel, and a crashing test fails alone instead of ending the run
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")
if [[ " $* " != *" --skip-tests "* ]]; then
  step "CUDA parity tests"
  timeout 150 $PY -m pytest -q -p no:cacheprovider $XDIST tests/ops/test_cuda_parity.py 2>&1 \
    | tee "$OUT/tests_cuda.log" | tail -25
  # a hung kernel would hang every step after it: stop here
  [ "${PIPESTATUS[0]}" = 124 ] && { echo "CUDA tests timed out"; exit 1; }
  [[ " $* " == *" --skip-other-tests "* ]] && SKIP_OTHER=1
fi
if [[ " $* " != *" --skip-tests "* && -z "${SKIP_OTHER:-}" ]]; then
  step "other op tests (their CUDA cases)"
  timeout 100 $PY -m pytest -q -p no:cacheprovider $XDIST tests/ops --ignore tests/ops/test_cuda_parity.py \
    2>&1 | tee "$OUT/tests_ops.log" | tail -8
fi

step "GPU-only targets: exp floor, LAP at B=256 (float32, CUDA events, median)"
timeout 100 $PY - <<'PYEOF' 2>&1 | tee "$OUT/targets.txt"
import os, statistics, time
import torch
from deepalign import ops
from deepalign.ops import reference
dev = torch.device("cuda")
torch.manual_seed(0)

def bench(fn, reps=20, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)  # microseconds

props = torch.cuda.get_device_properties(0)
clock = float(open(os.environ["OUT"] + "/gpu.txt").read().split(",")[-1].split()[0]) * 1e6
B, n, T, tau = 64, 128, 20, 0.05
unit = lambda t: torch.nn.functional.normalize(t, dim=-1)
s = unit(torch.randn(B, n, 32, device=dev)) @ unit(torch.randn(B, n, 32, device=dev)).mT
k = bench(lambda: ops.sinkhorn_project(s, T, tau))
raw = bench(lambda: torch.ops.deepalign.sinkhorn_project(s, T, tau))
floor = B * n * n * (2 * T + 1) / (props.multi_processor_count * 16 * clock) * 1e6
print(f"sinkhorn fwd B=64 n=128 it=20: {k:.1f} us via ops ({raw:.1f} us raw op); exp floor "
      f"{floor:.1f} us (MUFU 16/clk/SM x {props.multi_processor_count} SMs x {clock / 1e9:.2f} GHz)"
      f" -> {k / floor:.1f}x the floor")
# forward and backward op at B=64 n=128 it=20 with at most 1 / 2 CTAs per matrix (fresh process)
probe = """import statistics, sys, torch, deepalign.ops
s = torch.randn(64, 128, 128, device="cuda"); g = torch.randn_like(s)
_, r, c = torch.ops.deepalign.sinkhorn_project(s, 20, 0.05)
def t(fn):
    fn(); torch.cuda.synchronize(); out = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); out.append(a.elapsed_time(b) * 1e3)
    return statistics.median(out)
print(f"fwd {t(lambda: torch.ops.deepalign.sinkhorn_project(s, 20, 0.05)):.1f} us, bwd "
      f"{t(lambda: torch.ops.deepalign._sinkhorn_project_backward(g, s, r, c, 20, 0.05)):.1f} us")"""
import subprocess, sys
cluster_times = {cap: subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                     env=dict(os.environ, DEEPALIGN_MAX_CLUSTER=cap)).stdout.strip()
                 for cap in ("1", "2")}
# where the time goes: fixed cost (n_iters = 0) vs per iteration, one matrix vs the batch
parts = {f"B={b} it={it}": bench(lambda: torch.ops.deepalign.sinkhorn_project(s[:b], it, tau))
         for b in (1, 64) for it in (0, 1, 20)}
parts["sync round trip"] = bench(lambda: torch.zeros(1, device=dev).item())
print("raw op, us: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
# the fixed cost of a call, where the kernel takes almost nothing (B=1, n=2, it=20)
tiny = torch.randn(1, 2, 2, device=dev)
tiny_grad = tiny.clone().requires_grad_()
fixed = {"raw op": lambda: torch.ops.deepalign.sinkhorn_project(tiny, T, tau),
         "ops": lambda: ops.sinkhorn_project(tiny, T, tau),
         "ops requires_grad": lambda: ops.sinkhorn_project(tiny_grad, T, tau),
         "ops fwd+bwd": lambda: ops.sinkhorn_project(tiny_grad, T, tau).sum().backward()}
print("fixed cost B=1 n=2 it=20, us: " + ", ".join(f"{k} {bench(v):.1f}" for k, v in fixed.items()))
print("cluster size: " + ", ".join(f"{k}: {v}" for k, v in cluster_times.items()))
g = torch.randn_like(s)
_, rp, cp = torch.ops.deepalign.sinkhorn_project(s, T, tau)
print(f"backward op alone B=64 n=128 it=20: "
      f"{bench(lambda: torch.ops.deepalign._sinkhorn_project_backward(g, s, rp, cp, T, tau)):.1f} us")
for kind in ("uniform", "near-perm"):
    if kind == "uniform":
        cost, maximize = torch.rand(256, 128, 128, device=dev), False
    else:
        perm = torch.eye(128, device=dev)[torch.stack([torch.randperm(128) for _ in range(256)])]
        cost, maximize = reference.sinkhorn_project(3 * perm + torch.randn_like(perm), 20, 0.5), True
    got, want = ops.linear_assignment(cost, maximize), reference.linear_assignment(cost, maximize)
    total = lambda cols: cost.double().gather(-1, cols.unsqueeze(-1)).sum().item()
    assert abs(total(got) - total(want)) < 1e-6 * 256 * 128, f"LAP {kind}: not optimal"
    ours = bench(lambda: ops.linear_assignment(cost, maximize), 10)
    base = bench(lambda: reference.linear_assignment(cost, maximize), 3, 1)
    print(f"linear_assignment {kind} B=256 n=128: {ours:.0f} us vs scipy loop + copies {base:.0f} us"
          f" = {base / ours:.1f}x (target >= 10x)")
print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
PYEOF

step "bench_ops.py --device cuda (fwd vs eager and torch.compile, fwd+bwd, n=1024, outer, LAP)"
timeout 200 $PY benchmarks/bench_ops.py --device cuda --reps ${REPS:-7} --json "$OUT/ops_cuda.json" \
  2>&1 | tee "$OUT/bench_ops.txt" | grep -v "^\.\.\."

step "bench_align_speed.py --device cuda (Deep-Align vs weight matching, paper CNN on digits)"
(cd benchmarks && timeout 150 $PY bench_align_speed.py --device cuda --json "$OUT/align_speed_cuda.json") \
  2>&1 | tee "$OUT/align_speed.txt" | tail -5

step done
