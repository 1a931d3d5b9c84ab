"""Zoo training throughput: batched (deepalign.zoo) vs one nn.Module at a time with a DataLoader.

Correctness first: both ways must reach comparable test accuracy. Then models per minute, in
one run on the same machine; the issue's targets are checked and printed, and everything is
written as JSON (with CPU seconds beside wall seconds, since a shared machine inflates the
latter). Sections:

  step         one training step for 200 digits MLPs: vmap(functional_call) vs the bmm MLP path
  digits-200   200 MLPs 64-32-32-10, 20 epochs: batched vs sequential  (target >= 10x)
  digits-1000  1,000 such MLPs, batched, in chunks of 250 as the CLI does  (target < 2 min)
  digits-cnn   16 CNNs 1-16-32-32 (the CLI's default CNN and lr), 20 epochs: batched vs sequential
  fashion-256  256 MLPs 784-64-64-10, 5 epochs on Fashion-MNIST  (target < 10 min, acc >= 0.83)

Usage: python benchmarks/bench_zoo.py [--quick] [--json results/bench_zoo.json]
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.utils.data import DataLoader, TensorDataset

from deepalign.data import load_dataset
from deepalign.models import CNN, MLP, batched_forward, build_model
from deepalign.zoo import TrainSettings, train_classifiers


def sequential(config, data, n_models, settings):
    """The baseline: each model alone, nn.Module + DataLoader + torch.optim.AdamW."""
    accs, t0 = [], time.perf_counter()
    for seed in range(n_models):
        torch.manual_seed(seed)
        model = build_model(config)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr[0], weight_decay=0.0)
        loader = DataLoader(TensorDataset(data.X_train, data.y_train),
                            batch_size=settings.batch_size, shuffle=True)
        for _ in range(settings.epochs):
            for x, y in loader:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        with torch.no_grad():
            accs.append((model(data.X_test).argmax(1) == data.y_test).float().mean().item())
    return time.perf_counter() - t0, float(np.mean(accs))


def batched(config, data, n_models, settings, chunk=250):
    accs, t0 = [], time.perf_counter()
    for start in range(0, n_models, chunk):
        _, records = train_classifiers(config, data,
                                       list(range(start, min(start + chunk, n_models))), settings)
        accs += [r["test_acc"] for r in records]
    return time.perf_counter() - t0, float(np.mean(accs)), float(np.min(accs))


def step_times(data, B=200, bs=64, reps=30):
    """ms per training step (forward + backward) for B digits MLPs: the generic
    vmap(functional_call) path vs the MLP's baddbmm path that batched_forward takes."""
    model = MLP(64, [32, 32], 10)
    sds = [MLP(64, [32, 32], 10).state_dict() for _ in range(B)]
    P = {k: torch.stack([s[k] for s in sds]).requires_grad_() for k in sds[0]}
    idx = torch.randint(len(data.y_train), (B, bs))
    x, y = data.X_train[idx], data.y_train[idx]
    generic = vmap(lambda params, inputs: functional_call(model, params, (inputs,)))
    paths = {"vmap_functional_call": lambda: generic(P, x),
             "bmm": lambda: batched_forward(model, P, x, per_model_inputs=True)}
    # correctness first: the two paths agree
    with torch.no_grad():
        torch.testing.assert_close(paths["bmm"](), paths["vmap_functional_call"](),
                                   rtol=1e-5, atol=1e-6)
    out = {}
    for name, forward in paths.items():
        def step():
            logits = forward()
            torch.autograd.grad(F.cross_entropy(logits.transpose(1, 2), y), list(P.values()))
        step()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        out[name] = 1e3 * (time.perf_counter() - t0) / reps
    return out


def _show(row):
    print(" | ".join(f"{c:<34}" if i == 0 else f"{c:<24}" for i, c in enumerate(row)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the Fashion-MNIST section")
    ap.add_argument("--sequential-models", type=int, default=10,
                    help="models the sequential baseline trains (its rate is extrapolated)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice; 1 is fairer on a busy machine)")
    ap.add_argument("--json", default="results/bench_zoo.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_avg_start": os.getloadavg()[0]}
    rows, results = [], {"env": env}
    digits = load_dataset("digits")
    s = step_times(digits)
    results["step"] = s
    rows.append(("step, 200 digits MLPs", f"vmap {s['vmap_functional_call']:.2f} ms",
                 f"bmm {s['bmm']:.2f} ms",
                 f"bmm/vmap {s['bmm'] / s['vmap_functional_call']:.2f}", ""))
    _show(rows[-1])

    d_cfg, d_set = MLP(64, [32, 32], 10).config, TrainSettings(epochs=20, batch_size=64)
    t_seq, acc_seq = sequential(d_cfg, digits, args.sequential_models, d_set)
    t_bat, acc_bat, min_bat = batched(d_cfg, digits, 200, d_set)
    rate_seq, rate_bat = 60 * args.sequential_models / t_seq, 60 * 200 / t_bat
    results["digits-200"] = {"sequential_models_per_min": rate_seq,
                             "batched_models_per_min": rate_bat, "speedup": rate_bat / rate_seq,
                             "sequential_test_acc": acc_seq,
                             "batched_test_acc": acc_bat, "batched_min_test_acc": min_bat,
                             "batched_seconds": t_bat}
    assert abs(acc_bat - acc_seq) < 0.02, "batched and sequential accuracy differ"
    rows.append(("digits-200 (64-32-32-10, 20 ep)", f"seq {rate_seq:.0f}/min acc {acc_seq:.3f}",
                 f"batched {rate_bat:.0f}/min acc {acc_bat:.3f}", f"{rate_bat / rate_seq:.1f}x",
                 "ok" if rate_bat / rate_seq >= 10 else "BELOW 10x"))
    _show(rows[-1])

    cpu0 = time.process_time()
    t_1k, acc_1k, min_1k = batched(d_cfg, digits, 1000, d_set)
    results["digits-1000"] = {"seconds": t_1k, "cpu_seconds": time.process_time() - cpu0,
                              "test_acc": acc_1k, "min_test_acc": min_1k}
    rows.append(("digits-1000 (64-32-32-10, 20 ep)", f"{t_1k:.1f} s", f"acc {acc_1k:.3f}",
                 f"min {min_1k:.3f}", "ok" if t_1k < 120 and acc_1k >= 0.93 else "MISSED"))
    _show(rows[-1])

    c_cfg, c_set = CNN().config, TrainSettings(epochs=20, batch_size=64, lr=3e-3)
    t_cseq, acc_cseq = sequential(c_cfg, digits, 2, c_set)
    cpu0 = time.process_time()
    t_c, acc_c, min_c = batched(c_cfg, digits, 16, c_set)
    results["digits-cnn"] = {"seconds": t_c, "cpu_seconds": time.process_time() - cpu0,
                             "test_acc": acc_c, "min_test_acc": min_c,
                             "speedup": (t_cseq / 2) / (t_c / 16),
                             "sequential_seconds_per_model": t_cseq / 2,
                             "sequential_test_acc": acc_cseq}
    rows.append(("digits-cnn (16 CNNs, 20 ep)", f"{t_c:.1f} s", f"acc {acc_c:.3f} min {min_c:.3f}",
                 f"alone {acc_cseq:.3f}, {t_cseq / 2:.1f} s/model",
                 f"{(t_cseq / 2) / (t_c / 16):.1f}x" + ("" if acc_c >= 0.9 else " MISSED")))
    _show(rows[-1])

    if not args.quick:
        fashion = load_dataset("fashion-mnist")
        f_cfg, f_set = MLP(784, [64, 64], 10).config, TrainSettings(epochs=5, batch_size=128)
        t_fseq, acc_fseq = sequential(f_cfg, fashion, 2, f_set)
        cpu0 = time.process_time()
        t_f, acc_f, min_f = batched(f_cfg, fashion, 256, f_set, chunk=128)
        results["fashion-256"] = {"seconds": t_f, "cpu_seconds": time.process_time() - cpu0,
                                  "test_acc": acc_f, "min_test_acc": min_f,
                                  "sequential_seconds_per_model": t_fseq / 2,
                                  "sequential_test_acc": acc_fseq}
        rows.append(("fashion-256 (784-64-64-10, 5 ep)", f"{t_f:.0f} s", f"acc {acc_f:.3f}",
                     f"alone {acc_fseq:.3f}, {t_fseq / 2:.0f} s/model",
                     "ok" if t_f < 600 and acc_f >= 0.83 else "MISSED"))
        _show(rows[-1])

    env["load_avg_end"] = os.getloadavg()[0]
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpus']} CPUs, "
          f"load {env['load_avg_start']:.1f} -> {env['load_avg_end']:.1f}")
    for row in rows:
        _show(row)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
