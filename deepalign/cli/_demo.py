"""``deepalign demo``: the whole pipeline on scikit-learn's digits, in minutes on a laptop CPU.

1. train a zoo of small MLPs on digits (batched, resumable);
2. train a Deep-Align aligner on it without labels (time-boxed, resumable): it distils weight
   matching + Sinkhorn re-basin solutions of ``--distill-pairs`` training pairs with the
   ``bench_quality.py`` presets' recipe (``io_linear`` encoder, distillation alone, cosine
   schedule over the time limit); ``--distill-pairs 0`` trains with the paper's losses;
3. evaluate the seven alignment methods on held-out pairs: table, JSON and plots.
Re-running continues where a previous run stopped.
"""
import os
import time

# The demo's zoo: the embedded default data set and an MLP with three hidden sets to align.
DEMO_ARCH = {"arch": "mlp", "in_features": 64, "hidden": [32, 32, 32], "out_features": 10}
#: Solved training pairs for the aligner to distil: solving them takes 1.0-1.4 of the default
#: 8 minutes on a 2-core CPU (README).
DISTILL_PAIRS = 1024


def run_demo(out: str = "runs/demo", models: int = 800, train_minutes: float = 8.0,
             pairs: int = 32, sinkhorn_steps: int = 500, seed: int = 0,
             distill_pairs: int = DISTILL_PAIRS, distill_steps: int = 300) -> dict:
    """Train a zoo and an aligner, evaluate every method; returns the paths written.

    ``train_minutes`` includes solving the ``distill_pairs`` training pairs (weight matching
    and ``distill_steps`` steps of Sinkhorn re-basin) whose perms the aligner distils.
    """
    from deepalign.cli._evaluate import evaluate_zoo
    from deepalign.training import TrainConfig, train
    from deepalign.zoo import TrainSettings, train_zoo

    start = time.perf_counter()
    zoo_dir, run_dir = os.path.join(out, "zoo"), os.path.join(out, "aligner")
    print(f"[1/3] zoo: {models} MLPs {DEMO_ARCH['hidden']} on digits -> {zoo_dir}")
    train_zoo(zoo_dir, "digits", DEMO_ARCH, models, TrainSettings(epochs=20), seed=seed)
    print(f"[2/3] Deep-Align: label-free training for up to {train_minutes:g} min -> {run_dir}")
    resume = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    recipe, encoder = {}, {}
    if distill_pairs:  # with targets the paper's losses add nothing (README)
        recipe = {"distill_weight": 1.0, "distill_pairs": distill_pairs,
                  "distill_steps": distill_steps, "supervised_weight": 0.0,
                  "alignment_weight": 0.0, "interpolation_weight": 0.0}
        encoder = {"io_linear": True}
    config = TrainConfig(steps=100_000, time_limit=train_minutes, lr_schedule="cosine",
                         seed=seed, **recipe)
    train(zoo_dir, run_dir, config=config, resume=resume, **encoder)
    print(f"[3/3] evaluation: {pairs} held-out pairs, 7 methods")
    _, paths = evaluate_zoo(zoo_dir, os.path.join(run_dir, "best.pt"),
                            os.path.join(out, "evaluation"), pairs, sinkhorn_steps, seed=seed)
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min")
    return paths


def _run(args) -> int:
    run_demo(args.out, args.models, args.train_minutes, args.pairs, args.sinkhorn_steps,
             args.seed, args.distill_pairs, args.distill_steps)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="zoo + Deep-Align training + evaluation on digits",
                       description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    p.add_argument("--models", type=int, default=800, help="zoo size (default %(default)s)")
    p.add_argument("--train-minutes", type=float, default=8.0,
                   help="Deep-Align training time, distillation targets included "
                        "(default %(default)s)")
    p.add_argument("--pairs", type=int, default=32, help="test pairs (default %(default)s)")
    p.add_argument("--sinkhorn-steps", type=int, default=500,
                   help="steps of the Sinkhorn-based methods (default %(default)s)")
    p.add_argument("--distill-pairs", type=int, default=DISTILL_PAIRS,
                   help="training pairs solved by WM + Sinkhorn re-basin for Deep-Align to "
                        "distil; 0: the paper's losses alone (default %(default)s)")
    p.add_argument("--distill-steps", type=int, default=300,
                   help="Sinkhorn re-basin steps per solved pair (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run)
