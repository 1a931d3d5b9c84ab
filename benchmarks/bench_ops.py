"""Kernel benchmark: deepalign's fused ops against the pure-PyTorch reference, torch.compile of
it, a loop over scipy's linear_sum_assignment and autograd through amax / max(dim), on the same
inputs in one run.

Correctness is asserted first for every case; then each method is timed (median of
interleaved repetitions, so a co-tenant load spike hits all sides alike). Prints a table of
times and speed-up ratios with the issue's targets and writes JSON.

    .venv/bin/python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--json PATH]

Inputs follow kernels.md §1: scores X Y^T of unit-norm features (d = 32), tau = 0.05; LAP costs
are U[0, 1) ("uniform") or Sinkhorn plans of a noisy permutation ("near-perm", maximised).
Peak memory of forward + backward is measured in a fresh subprocess from the resident set size
on CPU (mmap threshold pinned so freed blocks return to the OS) and with the allocator's peak
statistics on CUDA.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from deepalign import ops
from deepalign.ops import reference

ROOT = Path(__file__).resolve().parent


class Timer:
    """Wall-clock (CPU) or CUDA-event (GPU) timing of one call, in milliseconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def time_methods(methods, timer, reps, warmup=1):
    """Median ms of each method, timed round-robin."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in methods}
    for _ in range(reps):
        for name, fn in methods.items():
            samples[name].append(timer(fn))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def sinkhorn_scores(b, n, device, seed=0, d=32, tau=0.05):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, n, d, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(b, n, d, generator=gen), dim=-1)
    return x.to(device), y.to(device), (x @ y.mT).to(device), tau


def lap_costs(kind, b, n, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(b, n, n, generator=gen, dtype=torch.float64).float().to(device), False
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])
    s = 3.0 * torch.nn.functional.one_hot(perm, n).float() + torch.randn(b, n, n, generator=gen)
    return reference.sinkhorn_project(s, 20, 0.5).to(device), True


def assert_close(got, want, what, rtol=1e-4):
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert err < rtol, f"{what}: relative error {err:.2e} vs the reference"


def scipy_loop(cost, maximize):
    c = cost.detach().cpu().double().numpy()
    return [scipy.optimize.linear_sum_assignment(m, maximize=maximize)[1] for m in c]


class Report:
    def __init__(self):
        self.rows = []

    def add(self, case, ours, base_name, base, target):
        ratio = base / ours
        self.rows.append(dict(case=case, ours_ms=ours, baseline=base_name, baseline_ms=base,
                              ratio=ratio, target=target,
                              ok=None if target is None else ratio >= target))

    def table(self):
        head = (f"{'case':<44} {'ours ms':>9} {'baseline':<22} {'base ms':>9} {'ratio':>7} "
                f"{'target':>7}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            target = "" if r["target"] is None else f">={r['target']:g}x"
            flag = "" if r["ok"] is None else ("  ok" if r["ok"] else "  MISSED")
            lines.append(f"{r['case']:<44} {r['ours_ms']:>9.2f} {r['baseline']:<22} "
                         f"{r['baseline_ms']:>9.2f} {r['ratio']:>6.1f}x {target:>7}{flag}")
        return "\n".join(lines)


def bench_sinkhorn(device, timer, reps, quick, report):
    cases = [(64, 128, 20), (1, 1024, 100)] if not quick else [(8, 64, 10), (1, 256, 20)]
    compiled = None if quick else torch.compile(reference.sinkhorn_project)
    for b, n, iters in cases:
        _, _, s, tau = sinkhorn_scores(b, n, device)
        assert_close(ops.sinkhorn_project(s, iters, tau),
                     reference.sinkhorn_project(s.double(), iters, tau), "sinkhorn_project")
        methods = {"ours": lambda: ops.sinkhorn_project(s, iters, tau),
                   "eager": lambda: reference.sinkhorn_project(s, iters, tau)}
        if compiled is not None and b > 1:
            compiled(s, iters, tau)
            methods["compiled"] = lambda: compiled(s, iters, tau)
        t = time_methods(methods, timer, reps)
        case = f"sinkhorn fwd B={b} n={n} it={iters}"
        report.add(case, t["ours"], "eager reference", t["eager"], 5)
        if "compiled" in t:
            report.add(case, t["ours"], "torch.compile(ref)", t["compiled"], 2)


def _fwd_bwd(fn, s, upstream):
    x = s.detach().requires_grad_()
    (fn(x) * upstream).sum().backward()
    return x.grad


def bench_backward(device, timer, reps, quick, report):
    b, n, iters = (64, 128, 20) if not quick else (8, 64, 10)
    _, _, s, tau = sinkhorn_scores(b, n, device)
    upstream = torch.randn(s.shape, generator=torch.Generator().manual_seed(1)).to(device)
    fused = lambda x: ops.sinkhorn_project(x, iters, tau)  # noqa: E731
    eager = lambda x: reference.sinkhorn_project(x, iters, tau)  # noqa: E731
    assert_close(_fwd_bwd(fused, s, upstream), _fwd_bwd(eager, s.double(), upstream.double()),
                 "sinkhorn backward")
    t = time_methods({"ours": lambda: _fwd_bwd(fused, s, upstream),
                      "eager": lambda: _fwd_bwd(eager, s, upstream)}, timer, reps)
    case = f"sinkhorn fwd+bwd B={b} n={n} it={iters}"
    report.add(case, t["ours"], "autograd eager ref", t["eager"], 10)
    mem = {name: peak_memory_mb(name, b, n, iters, device) for name in ("ours", "eager")}
    return {"case": case, "ours_peak_mb": mem["ours"], "eager_peak_mb": mem["eager"],
            "ratio": mem["eager"] / mem["ours"], "target": 5}


def bench_outer(device, timer, reps, quick, report):
    b, n, iters = (64, 128, 20) if not quick else (8, 64, 10)
    f0, f1, s, tau = sinkhorn_scores(b, n, device)
    assert_close(ops.outer_sinkhorn_project(f0, f1, iters, tau),
                 ops.sinkhorn_project(s, iters, tau), "outer_sinkhorn_project")
    t = time_methods({"ours": lambda: ops.outer_sinkhorn_project(f0, f1, iters, tau),
                      "split": lambda: ops.sinkhorn_project(f0 @ f1.mT, iters, tau)}, timer, reps)
    report.add(f"outer_sinkhorn fwd B={b} n={n} it={iters}", t["ours"], "bmm + sinkhorn_project",
               t["split"], 1)


def bench_assignment(device, timer, reps, quick, report):
    cases = [(64, 128), (8, 512)] if not quick else [(16, 64)]
    for b, n in cases:
        for kind in ("uniform", "near-perm"):
            cost, maximize = lap_costs(kind, b, n, device)
            cols = ops.linear_assignment(cost, maximize=maximize)
            want = scipy_loop(cost, maximize)
            c = cost.double().cpu()
            got_total = c.gather(-1, cols.cpu().unsqueeze(-1)).sum()
            want_total = sum(c[k, np.arange(n), w].sum() for k, w in enumerate(want))
            assert abs(got_total - want_total) < 1e-6 * n * b, f"LAP {kind}: not optimal"
            t = time_methods({"ours": lambda: ops.linear_assignment(cost, maximize=maximize),
                              "scipy": lambda: scipy_loop(cost, maximize)}, timer, reps)
            report.add(f"linear_assignment {kind} B={b} n={n}", t["ours"], "scipy LSA loop",
                       t["scipy"], 5 if n <= 128 else 2)


def bench_pooling(device, timer, reps, quick, report):
    """The encoder's row/column max-pool, forward + backward, against autograd through the two
    ways PyTorch offers: ``amax`` (fast forward, mask-building backward) and ``max(dim)`` (the
    reference: indices, slow forward on a middle axis)."""
    if device.type != "cpu":  # other devices run the reference itself
        return
    shape = (96, 32, 32, 64) if not quick else (8, 16, 16, 32)  # the paper config's hidden weights
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(shape, generator=gen).to(dtype)
        g_rows = torch.randn(shape[0], shape[1], shape[3], generator=gen).to(dtype)
        g_cols = torch.randn(shape[0], shape[2], shape[3], generator=gen).to(dtype)

        def fwd_bwd(fn):
            x = w.detach().requires_grad_()
            rows, cols = fn(x)
            torch.autograd.backward([rows, cols], [g_rows, g_cols])
            return x.grad

        assert torch.equal(fwd_bwd(ops.row_col_max), fwd_bwd(reference.row_col_max)), "pooling"
        t = time_methods({"ours": lambda: fwd_bwd(ops.row_col_max),
                          "amax": lambda: fwd_bwd(lambda x: (x.amax(2), x.amax(1))),
                          "max": lambda: fwd_bwd(reference.row_col_max)}, timer, reps)
        case = f"row_col_max fwd+bwd {tuple(shape)} {str(dtype)[6:]}"
        report.add(case, t["ours"], "autograd amax pair", t["amax"], None)
        report.add(case, t["ours"], "autograd max(dim) ref", t["max"], None)


def bench_entry_pass(device, timer, reps, quick, report):
    """The eval-mode encoder's entry pass with the next layer's pools (``linear_relu_pool``)
    against the reference in ATen: a matmul, two broadcast adds, the ReLU and two means, each a
    pass over entry-sized tensors. Shapes: the paper CIFAR-10 CNN's widest hidden weight (128 x 128
    channel pairs, 32 channels) for 10 networks, and its first layer (9 kernel taps in)."""
    if device.type != "cpu":  # other devices run the reference itself
        return
    b = 10 if not quick else 2
    for c_in in (32, 9):
        gen = torch.Generator().manual_seed(0)
        args = (torch.randn(b, 128, 128, c_in, generator=gen),
                torch.randn(c_in, 32, generator=gen) / c_in ** 0.5,
                torch.randn(b, 128, 32, generator=gen), torch.randn(b, 128, 32, generator=gen))
        got = ops.linear_relu_pool(*args)
        for g, w in zip(got, reference.linear_relu_pool(*args)):
            assert_close(g, w, "linear_relu_pool", rtol=1e-5)
        t = time_methods({"ours": lambda: ops.linear_relu_pool(*args),
                          "pools": lambda: ops.linear_relu_pool(*args, keep_output=False),
                          "aten": lambda: reference.linear_relu_pool(*args)}, timer, reps)
        case = f"linear_relu_pool {(b, 128, 128, c_in)} -> 32"
        report.add(case, t["ours"], "ATen reference", t["aten"], None)
        report.add(case + ", pools only", t["pools"], "ATen reference", t["aten"], None)


def bench_edge_message(device, timer, reps, quick, report):
    """The graph encoder's message-passing step (``edge_message_aggregate``), forward and
    forward + backward, against the reference in ATen with autograd: two gathers, two adds, a
    ReLU and two index_adds, each an edge-sized tensor. Graph: the weight graph of an MNIST MLP
    784-128-128-128-10 (134,400 edges over 1,178 units), 32 channels, 8 networks."""
    if device.type != "cpu":  # other devices run the reference itself
        return
    from deepalign.models import MLP
    from deepalign.nn.graph import WeightGraph
    from deepalign.weightspace import PermutationSpec

    model = MLP(784, (128, 128, 128), 10) if not quick else MLP(64, (32, 32), 10)
    spec = PermutationSpec.from_module(model, torch.zeros(1, model.config["in_features"]))
    graph = WeightGraph(spec, model.state_dict())
    b, c, n, e = (8 if not quick else 2), 32, graph.num_nodes, len(graph.src)
    gen = torch.Generator().manual_seed(0)
    x_src, x_dst = (torch.randn(b, n, c, generator=gen) for _ in range(2))
    edge = torch.randn(b, e, c, generator=gen)
    upstream = [torch.randn(t.shape, generator=gen) for t in (edge, x_src, x_src)]
    index = (graph.src, graph.dst)

    def fwd_bwd(fn):
        leaves = [t.detach().requires_grad_() for t in (x_src, x_dst, edge)]
        torch.autograd.backward(fn(*leaves, *index), upstream)
        return [t.grad for t in leaves]

    for got, want in zip(ops.edge_message_aggregate(x_src, x_dst, edge, *index),
                         reference.edge_message_aggregate(x_src, x_dst, edge, *index)):
        assert_close(got, want, "edge_message_aggregate", rtol=1e-5)
    for got, want in zip(fwd_bwd(ops.edge_message_aggregate),
                         fwd_bwd(reference.edge_message_aggregate)):
        assert_close(got, want, "edge_message_aggregate backward", rtol=1e-5)
    with torch.no_grad():
        t = time_methods({"ours": lambda: ops.edge_message_aggregate(x_src, x_dst, edge, *index),
                          "aten": lambda: reference.edge_message_aggregate(x_src, x_dst, edge,
                                                                           *index)},
                         timer, reps)
    case = f"edge_message_aggregate B={b} E={e} c={c}"
    report.add(case, t["ours"], "ATen reference", t["aten"], None)
    t = time_methods({"ours": lambda: fwd_bwd(ops.edge_message_aggregate),
                      "aten": lambda: fwd_bwd(reference.edge_message_aggregate)}, timer, reps)
    report.add(case + " fwd+bwd", t["ours"], "autograd reference", t["aten"], None)


_MEMORY_PROBE = r"""
import sys, torch
from deepalign import ops
from deepalign.ops import reference
name, b, n, iters, device = sys.argv[1], *map(int, sys.argv[2:5]), torch.device(sys.argv[5])
gen = torch.Generator().manual_seed(0)
s = (0.05 * torch.randn(b, n, n, generator=gen)).to(device)
g = torch.randn(b, n, n, generator=gen).to(device)
fn = ops.sinkhorn_project if name == "ours" else reference.sinkhorn_project
def step():
    x = s.detach().requires_grad_()
    (fn(x, iters, 0.05) * g).sum().backward()
def rss(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
step()
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated(); step(); torch.cuda.synchronize()
    print((torch.cuda.max_memory_allocated() - base) / 2**20)
else:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set size
    base = rss("VmRSS:"); step(); print(rss("VmHWM:") - base)
"""


def peak_memory_mb(name, b, n, iters, device):
    """Peak extra memory (MiB) of one forward + backward, in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, name, str(b), str(n), str(iters),
                          str(device)], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def machine(device):
    info = dict(python=platform.python_version(), torch=torch.__version__,
                threads=torch.get_num_threads(), platform=platform.platform())
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
        info["load_average"] = os.getloadavg()
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per method")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice, all cores)")
    parser.add_argument("--json", type=Path, default=None,
                        help="output path (default benchmarks/results/ops_<device>.json)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc reuses freed blocks, as deepalign.training.train sets up on "
                             "the CPU (applies to every method alike)")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["sinkhorn", "backward", "outer", "assignment", "pooling",
                                 "entry_pass", "edge_message"],
                        help="run these stages only (default: all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.keep_freed_memory:
        from deepalign.training import keep_freed_memory

        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not ops.has_cuda_kernels():
        sys.exit("--device cuda needs a GPU and a build of deepalign with CUDA kernels")
    reps = args.reps or (3 if args.quick else 9)
    timer, report = Timer(device), Report()
    stages = [bench_sinkhorn, bench_backward, bench_outer, bench_assignment, bench_pooling,
              bench_entry_pass, bench_edge_message]
    if args.only:
        stages = [f for f in stages if f.__name__[6:] in args.only]
    memory = None
    for stage in stages:
        print(f"... {stage.__name__[6:]}", file=sys.stderr, flush=True)
        out = stage(device, timer, reps, args.quick, report)
        memory = out or memory
    print(f"\ndeepalign kernel benchmark, {args.device}, float32 unless named, "
          f"{torch.get_num_threads()} "
          f"threads, {reps} reps (median ms), load average {os.getloadavg()[0]:.1f}"
          + (", freed memory kept" if args.keep_freed_memory else ""))
    print(report.table())
    if memory:
        print(f"\npeak memory, {memory['case']}: ours {memory['ours_peak_mb']:.1f} MiB, eager "
              f"autograd {memory['eager_peak_mb']:.1f} MiB ({memory['ratio']:.1f}x less, target "
              f">= {memory['target']}x)")
    path = args.json or ROOT / "results" / f"ops_{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(machine=machine(device), quick=args.quick, reps=reps,
                                    keep_freed_memory=args.keep_freed_memory,
                                    rows=report.rows, memory=memory), indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
