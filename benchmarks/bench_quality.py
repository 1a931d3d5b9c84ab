"""Deep-Align's barrier against weight matching's, within a fixed CPU training budget.

One command per zoo reproduces the README's "Deep-Align distilled from Sinkhorn re-basin"
tables: it builds (or resumes) the zoo, trains Deep-Align for ``--minutes`` of wall time
(the distillation targets' computation included), then runs the seven methods of
``deepalign evaluate`` on the same held-out test pairs.

1. Correctness first: the distillation loss is smallest at its target perms, and the aligner
   (float64, untrained) is equivariant and swap-symmetric (``deepalign.testing``).
2. Training: ``deepalign.training.train`` with the preset's encoder, losses (distillation
   alone; ``--distill-weight 0 --paper-loss-weight 1`` gives the paper's label-free recipe)
   and solved pairs, a cosine schedule that decays over the budget, ``best.pt`` selected on
   the barrier of ``VAL_PAIRS`` validation pairs.
3. Quality: ``deepalign.cli._evaluate.evaluate_zoo`` on ``--pairs`` test pairs (100 disjoint
   pairs of the preset's held-out networks); the ratio of Deep-Align's mean barrier to weight
   matching's is the headline number, given with its 95% paired bootstrap interval
   (``deepalign.comparison.paired_ratio``): over 25 pairs the choice of pairs alone moves it
   by several hundredths.

Usage::

    python benchmarks/bench_quality.py --preset digits --out results/quality-digits
    python benchmarks/bench_quality.py --preset fashion-mnist --out results/quality-fmnist
    # an aligner for networks trained on other data (README, "Out of distribution"): the
    # presets' io_linear maps fit the training data's inputs, so off, with the paper's losses
    python benchmarks/bench_quality.py --preset fashion-mnist --out results/quality-fmnist-ws \
        --no-io-linear --paper-loss-weight 1 --distill-pairs 1024 \
        --weight-similarity --normalize-layers --input-mixing signed-permutation

Writes ``OUT/bench_quality.json`` and ``OUT/table.md`` (plus the zoo in ``OUT/zoo`` unless
``--zoo`` is given, the run in ``OUT/aligner`` and the evaluation in ``OUT/evaluation``).
Re-running resumes each stage.
"""
import argparse
import json
import os
import platform
import time

import torch

from deepalign.cli._evaluate import evaluate_zoo
from deepalign.cli._train import UNBOUNDED_STEPS
from deepalign.comparison import paired_ratio
from deepalign.nn import DeepAlign
from deepalign.testing import assert_aligner_equivariant
from deepalign.training import (TrainConfig, distillation_loss, keep_freed_memory,
                                read_metrics, train)
from deepalign.weightspace import random_permutations, to_soft
from deepalign.zoo import TrainSettings, Zoo, train_zoo

# zoo, encoder and distillation of each preset; the cosine schedule decays over the budget
PRESETS = {
    "digits": {"dataset": "digits", "hidden": [32, 32, 32], "in_features": 64, "count": 8000,
               "epochs": 20, "val": 0.00625, "test": 0.025, "encoder": {"io_linear": True},
               "distill_pairs": 8192, "paper_loss_weight": 0.0},
    "fashion-mnist": {"dataset": "fashion-mnist", "hidden": [64, 64], "in_features": 784,
                      "count": 800, "epochs": 3, "val": 0.0375, "test": 0.25,
                      "encoder": {"downsample": 8, "io_linear": True}, "distill_pairs": 4096,
                      "paper_loss_weight": 0.0},
}
# validation pairs that choose best.pt: with 32, a digits run picked step 2,100 of 5,430, whose
# barrier on 64 other validation pairs was 0.185 against the final step's 0.181
VAL_PAIRS = 128


def _check(zoo, encoder):
    gen = torch.Generator().manual_seed(0)
    target = random_permutations({"P": 8}, 2, gen)
    noise = torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)
    at_target = distillation_loss({"P": 20 * to_soft(target, torch.float64)["P"] + noise}, target)
    elsewhere = distillation_loss({"P": noise}, target)
    assert at_target < elsewhere, "the distillation loss does not prefer its target"
    spec = zoo.spec()
    nets = zoo.stacked(zoo.split["val"][:4])
    aligner = DeepAlign.from_zoo(zoo, **encoder).double().eval()
    a = {k: v[:2].double() for k, v in nets.items()}
    b = {k: v[2:4].double() for k, v in nets.items()}
    assert_aligner_equivariant(aligner, spec, a, b, generator=gen)


def _zoo(args, preset) -> Zoo:
    if args.zoo:
        return Zoo(args.zoo)
    arch = {"arch": "mlp", "in_features": preset["in_features"], "hidden": preset["hidden"],
            "out_features": 10}
    start = time.perf_counter()
    zoo = train_zoo(os.path.join(args.out, "zoo"), preset["dataset"], arch, preset["count"],
                    TrainSettings(epochs=preset["epochs"]), seed=args.seed, val=preset["val"],
                    test=preset["test"], progress=not args.quiet)
    print(f"zoo: {preset['count']} MLPs {preset['hidden']} on {preset['dataset']} "
          f"({(time.perf_counter() - start) / 60:.1f} min this call)")
    return zoo


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--out", default="results/quality")
    parser.add_argument("--zoo", help="use this zoo instead of building the preset's")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="training budget, distillation targets included")
    parser.add_argument("--steps", type=int, help="end after this many steps (default: the "
                        "clock alone, over which the cosine schedule decays)")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--distill-pairs", type=int, help="solved training pairs (preset's "
                        "default)")
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--paper-loss-weight", type=float,
                        help="weight of the paper's supervised, alignment and interpolation "
                        "losses (preset's default; 0: distillation alone, a third less "
                        "encoding per step)")
    parser.add_argument("--pairs", type=int, default=100, help="test pairs")
    parser.add_argument("--sinkhorn-steps", type=int, default=1000)
    parser.add_argument("--methods", help="comma-separated subset of the seven (default: all)")
    parser.add_argument("--weight-similarity", action="store_true",
                        help="add weight matching's similarity to the head (DeepAlign option)")
    parser.add_argument("--normalize-layers", action="store_true",
                        help="divide each layer by its weights' RMS before the encoder")
    parser.add_argument("--io-linear", action=argparse.BooleanOptionalAction,
                        help="full linear maps over the fixed inputs and outputs in the "
                        "encoder's first layer (DeepAlign option; preset's default)")
    parser.add_argument("--input-mixing", default="none",
                        choices=["none", "permutation", "signed-permutation"],
                        help="mix the input space of each training pair (TrainConfig)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    args.distill_pairs = args.distill_pairs or preset["distill_pairs"]
    if args.paper_loss_weight is None:
        args.paper_loss_weight = preset["paper_loss_weight"]
    os.makedirs(args.out, exist_ok=True)
    keep_freed_memory()
    zoo = _zoo(args, preset)
    run = os.path.join(args.out, "aligner")
    config = TrainConfig(steps=args.steps or UNBOUNDED_STEPS, lr_schedule="cosine",
                         time_limit=args.minutes, distill_weight=args.distill_weight,
                         distill_pairs=args.distill_pairs, distill_steps=args.distill_steps,
                         supervised_weight=args.paper_loss_weight,
                         alignment_weight=args.paper_loss_weight,
                         interpolation_weight=args.paper_loss_weight,
                         input_mixing=args.input_mixing, val_pairs=VAL_PAIRS, seed=args.seed)
    resume = os.path.exists(os.path.join(run, "checkpoint.pt"))
    encoder = dict(preset["encoder"], **{flag: True for flag in ("weight_similarity",
                                                                 "normalize_layers")
                                         if getattr(args, flag)})
    if args.io_linear is not None:
        encoder["io_linear"] = args.io_linear
    _check(zoo, encoder)
    train(zoo, run, config=config, resume=resume, progress=not args.quiet, **encoder)
    metrics = read_metrics(run)
    targets_s = (torch.load(os.path.join(run, "targets.pt"), weights_only=True)["seconds"]
                 if args.distill_weight > 0 else 0.0)
    val = metrics["val/barrier"]
    best_step, best_val = min(val, key=lambda sv: sv[1])
    results, paths = evaluate_zoo(zoo.path, os.path.join(run, "best.pt"),
                                  os.path.join(args.out, "evaluation"), args.pairs,
                                  args.sinkhorn_steps, args.methods and args.methods.split(","),
                                  seed=args.seed, progress=not args.quiet)
    barrier = {r.name: r.summary()["barrier_mean"] for r in results}
    per_pair = {r.name: r.curve.barrier for r in results}
    versus = paired_ratio(per_pair["deep_align"], per_pair["weight_matching"])
    report = {
        "preset": args.preset, "zoo": zoo.path, "machine": platform.machine(),
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(), "config": vars(args),
        "train_steps": metrics["loss"][-1][0], "train_minutes": metrics["time_s"][-1][1] / 60,
        "targets_minutes": targets_s / 60, "best_val_step": best_step,
        "best_val_barrier": best_val, "test_pairs": results[0].curve.barrier.numel(),
        "barrier": barrier,
        "deep_align_over_weight_matching": versus["ratio"],
        "deep_align_vs_weight_matching": versus,
        "methods": [r.summary() for r in results], "evaluation": paths,
    }
    with open(os.path.join(args.out, "bench_quality.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(paths["table"]) as f:
        table = f.read()
    summary = (f"Deep-Align / weight matching barrier: {versus['ratio']:.3f} (95% paired "
               f"bootstrap interval {versus['interval'][0]:.3f}-{versus['interval'][1]:.3f}; "
               f"lower on {versus['lower_on']}/{versus['pairs']} pairs, difference "
               f"{versus['diff_mean']:+.4f} +- {versus['diff_se']:.4f}) after "
               f"{report['train_minutes']:.1f} min: targets {report['targets_minutes']:.1f} "
               f"min for {args.distill_pairs if args.distill_weight else 0} pairs, "
               f"{report['train_steps']} steps")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n" + summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
