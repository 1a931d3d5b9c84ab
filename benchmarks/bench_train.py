"""Deep-Align training speed and quality on a digits MLP zoo.

1. Correctness first: each configuration's aligner passes the float64 equivariance and swap
   checks (``deepalign.testing``).
2. Speed: seconds per full training step (supervised + alignment + interpolation losses,
   backward, AdamW) of ``--batch-size`` items (one labelled and one unlabelled pair each, as
   in the authors' trainer), for the 'paper' configuration (the authors' functional MNIST
   setting: hidden 64, 4 hidden layers, out 128, SAB 8 heads, downsample 8, BN) and for our
   'default'. Reported as items ("pairs" in the authors' count) per second, against the
   authors' code measured at about 7 s per 32-item step on the same 2-core machines.
3. Quality (``--train-minutes > 0``): trains the default configuration for that long with
   ``deepalign.training.train`` and reports the validation barrier over time against weight
   matching and naive averaging on the same validation pairs.

Usage::

    python benchmarks/bench_train.py --zoo zoos/digits-mlp --out results/bench_train \\
        [--train-minutes 30] [--speed-steps 9]

Writes ``OUT/bench_train.json`` and ``OUT/barrier_over_time.png``.
"""
import argparse
import json
import os
import time

import torch

from deepalign import PermutationSpec, weight_matching
from deepalign.data import load_dataset
from deepalign.nn import DeepAlign, make_config
from deepalign.testing import assert_aligner_equivariant
from deepalign.training import (Augmentation, BarrierValidator, PairSampler, TrainConfig,
                                keep_freed_memory, read_metrics, step_generator, train)
from deepalign.training._trainer import _StepLoss
from deepalign.weightspace import identity_permutations
from deepalign.zoo import Zoo

AUTHORS_SECONDS_PER_STEP = 7.0  # authors' code, default config, 32 items, 2-core machine
AUTHORS_PARAMETERS = 31_873_905


def _parse(text: str) -> tuple:
    """'paper' or 'paper:downsample_every_layer=0,hidden=32' -> (preset, overrides)."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split("+")):
        key, value = item.split("=")
        overrides[key] = type(getattr(make_config(name), key) or 0)(float(value))
    return name, overrides


def _check_equivariance(zoo, spec, nets, config):
    torch.manual_seed(0)
    name, overrides = _parse(config)
    aligner = DeepAlign.from_spec(spec, nets, name, **overrides).double().eval()
    a = {k: v[:2].double() for k, v in nets.items()}
    b = {k: v[2:4].double() for k, v in nets.items()}
    assert_aligner_equivariant(aligner, spec, a, b, generator=torch.Generator().manual_seed(0))


def _speed(zoo, spec, nets, data, config, precision, batch, steps):
    torch.manual_seed(0)
    name, overrides = _parse(config)
    aligner = DeepAlign.from_spec(spec, nets, name, **overrides)
    params = sum(p.numel() for p in aligner.parameters())
    loss_module = _StepLoss(aligner, spec, TrainConfig(precision=precision))
    sampler = PairSampler(nets, spec, aligner.layout, Augmentation())
    model = zoo.build_model()
    opt = torch.optim.AdamW(aligner.parameters(), lr=1e-3, amsgrad=True)
    times = []
    for step in range(steps + 1):  # the first step warms up
        tick = time.perf_counter()
        gen = step_generator(0, step, 0)
        pairs = sampler.sample(batch, gen)
        pick = torch.randint(len(data.X_train), (128,), generator=gen)
        loss, _ = loss_module(pairs, model, data.X_train[pick], data.y_train[pick],
                              torch.rand(batch, generator=gen))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(aligner.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - tick)
    seconds = sorted(times[1:])[len(times[1:]) // 2]  # median: robust to a noisy neighbour
    return {"config": config, "precision": precision, "parameters": params,
            "seconds_per_step": seconds,
            "items_per_s": batch / seconds,
            "speedup_vs_authors": AUTHORS_SECONDS_PER_STEP / seconds * batch / 32}


def _quality(zoo, spec, data, args):
    cfg = TrainConfig(steps=100_000, time_limit=args.train_minutes, eval_every=args.eval_every,
                      checkpoint_every=args.eval_every, val_pairs=args.val_pairs,
                      precision=args.train_precision)
    run = os.path.join(args.out, "run")
    train(zoo, run, config=cfg, resume=os.path.exists(os.path.join(run, "checkpoint.pt")))
    val = BarrierValidator(zoo.stacked(zoo.split["val"]), spec, zoo.build_model(),
                           (data.X_train[:cfg.val_images], data.y_train[:cfg.val_images]),
                           cfg.val_pairs, cfg.val_points, cfg.seed)
    wm = weight_matching(val.a, val.b, spec)
    naive = identity_permutations(spec.perm_sizes(val.a, batched=True), cfg.val_pairs)
    metrics = read_metrics(run)
    clock = dict(metrics["time_s"])
    curve = [(step, clock[step] / 60, value) for step, value in metrics["val/barrier"]]
    return {"weight_matching_barrier": val.barrier(wm), "naive_barrier": val.barrier(naive),
            "deep_align_curve": [{"step": s, "minutes": m, "barrier": b} for s, m, b in curve],
            "deep_align_best": min(b for _, _, b in curve),
            "exact_at_end": metrics["val/exact"][-1][1]}


def _plot(quality, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = quality["deep_align_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["minutes"] for c in curve], [c["barrier"] for c in curve], marker="o",
            label="Deep-Align (default config)")
    ax.axhline(quality["weight_matching_barrier"], color="C1", ls="--", label="weight matching")
    ax.axhline(quality["naive_barrier"], color="C2", ls=":", label="naive")
    ax.set(xlabel="training wall time (min, 2-core CPU)", ylabel="validation loss barrier",
           title="Deep-Align on the digits MLP zoo")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="zoos/digits-mlp")
    parser.add_argument("--out", default="results/bench_train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--speed-steps", type=int, default=9)
    parser.add_argument("--configs", default="paper,paper:downsample_every_layer=0,default",
                        help="comma-separated presets, each with optional ':field=value+...' "
                        "encoder overrides")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="encoder precisions to time each configuration in")
    parser.add_argument("--train-minutes", type=float, default=0.0)
    parser.add_argument("--train-precision", default="float32", help="of the quality run")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-pairs", type=int, default=32)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keep_freed_memory()  # as train() does on the CPU
    zoo = Zoo(args.zoo)
    data = load_dataset(zoo.dataset)
    spec = PermutationSpec.from_module(zoo.build_model(), torch.zeros(1, *data.image_shape))
    nets = zoo.stacked(zoo.split["train"])
    # the machines are shared: record how busy this one was
    report = {"zoo": args.zoo, "threads": torch.get_num_threads(),
              "load_average_at_start": os.getloadavg(), "speed": []}
    for config in args.configs.split(","):
        _check_equivariance(zoo, spec, nets, config)
        for precision in args.precisions.split(","):
            row = _speed(zoo, spec, nets, data, config, precision, args.batch_size,
                         args.speed_steps)
            report["speed"].append(row)
            print(f"{config:>8} {precision:>8}: {row['parameters']:>10,} params  "
                  f"{row['seconds_per_step']:.3f} s/step  {row['items_per_s']:.1f} items/s  "
                  f"{row['speedup_vs_authors']:.1f}x the authors' ({AUTHORS_PARAMETERS:,} "
                  f"params, {AUTHORS_SECONDS_PER_STEP} s/step)")
    if args.train_minutes > 0:
        report["quality"] = _quality(zoo, spec, data, args)
        q = report["quality"]
        print(f"validation barrier: Deep-Align best {q['deep_align_best']:.4f}, weight matching "
              f"{q['weight_matching_barrier']:.4f}, naive {q['naive_barrier']:.4f}")
        _plot(q, os.path.join(args.out, "barrier_over_time.png"))
    report["load_average_at_end"] = os.getloadavg()
    with open(os.path.join(args.out, "bench_train.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
