"""``deepalign evaluate``: every alignment method on a zoo's held-out pairs."""
import os

from deepalign.comparison import ABLATIONS, METHODS, compare_methods, format_table, write_report
from deepalign.correction import CORRECTIONS
from deepalign.comparison._convergence import (barrier_by_step, plot_barrier_by_step,
                                               record_steps, speedup_summary)


def evaluate_zoo(zoo_path: str, aligner_path=None, out=None, n_pairs: int = 64,
                 sinkhorn_steps: int = 1000, methods=None, n_points: int = 25,
                 seed: int = 0, progress: bool = True, corrections=(None,),
                 correction_samples: int = 1000) -> tuple:
    """Compare ``methods`` on the zoo's test pairs; print the table, write JSON and PNG.

    Each method's barrier is measured once per entry of ``corrections`` (None, "reset_bn",
    "repair"), the corrections measuring on ``correction_samples`` training inputs. By
    default ``methods`` are the seven of ``METHODS``, plus the heads ablation when the zoo's
    spec has attention heads; a default method that does not support the zoo's spec is
    skipped with a note.
    """
    from deepalign.comparison._setup import task_from_zoo
    from deepalign.nn import DeepAlign
    from deepalign.zoo import Zoo

    zoo = Zoo(zoo_path)
    aligner = DeepAlign.load(aligner_path) if aligner_path else None
    task, test_data = task_from_zoo(zoo, aligner, n_pairs, sinkhorn_steps, seed, progress,
                                    correction_samples)
    chosen = methods is not None
    if not chosen:
        heads = any(g.kind == "heads" for g in task.spec.block_groups)
        methods = list(METHODS) + (list(ABLATIONS) if heads else [])
    if aligner is None:
        methods = [m for m in methods if not m.startswith("deep_align")]
    task.record_steps = record_steps(sinkhorn_steps)
    results = compare_methods(task, test_data, methods, n_points, corrections,
                              skip_unsupported=not chosen)
    title = f"{os.path.basename(os.path.normpath(zoo_path))}: {task.n_pairs} test pairs"
    print(format_table(results, title))
    curves = barrier_by_step(task, test_data)
    speedup = speedup_summary(curves)
    if speedup:
        reached = speedup["deep_align_sinkhorn_steps_to_reach"]
        print(f"Sinkhorn re-basin's final barrier {speedup['sinkhorn_final_barrier']:.4f} after "
              f"{speedup['sinkhorn_steps']} steps; Deep-Align + Sinkhorn reaches it after "
              + ("never (within the run)" if reached is None else f"{reached} steps"))
    out = out or os.path.join(os.path.dirname(aligner_path) if aligner_path else zoo_path,
                              "evaluation")
    paths = write_report(results, out, title,
                         {"zoo": zoo_path, "aligner": aligner_path,
                          "sinkhorn_steps": sinkhorn_steps, "n_pairs": task.n_pairs,
                          "correction_samples": correction_samples,
                          "barrier_by_step": curves, "speedup": speedup})
    if curves:
        paths["convergence"] = plot_barrier_by_step(
            curves, os.path.join(out, "convergence.png"), f"{title}: barrier against steps")
    print("wrote " + ", ".join(paths.values()))
    return results, paths


def _run(args) -> int:
    from deepalign.training import keep_freed_memory

    # every method runs all pairs at once on the CPU: without it each large intermediate is
    # page-faulted in afresh (Deep-Align on 50 Fashion-MNIST pairs: about 3 against 11 ms/pair)
    keep_freed_memory()
    corrections = [None if c == "none" else c for c in args.correction.split(",")]
    wrong = [c for c in corrections if c not in (None, *CORRECTIONS)]
    if wrong:
        raise SystemExit(f"deepalign evaluate: --correction takes none, {', '.join(CORRECTIONS)}"
                         f" (comma-separated), got {wrong}")
    evaluate_zoo(args.zoo, args.aligner, args.out, args.pairs, args.sinkhorn_steps,
                 args.methods and args.methods.split(","), args.points, args.seed, not args.quiet, corrections,
                 args.correction_samples)
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="barrier/AUC/time of every alignment method on a zoo")
    p.add_argument("--zoo", required=True, help="zoo directory (its test split is used)")
    p.add_argument("--aligner", help="trained Deep-Align file (e.g. runs/digits/best.pt); "
                                     "without it the Deep-Align rows are skipped")
    p.add_argument("--out", help="output folder (default: beside the aligner, or in the zoo)")
    p.add_argument("--pairs", type=int, default=64, help="number of test pairs (default 64)")
    p.add_argument("--sinkhorn-steps", type=int, default=1000,
                   help="steps of Sinkhorn re-basin and of the '+ Sinkhorn' refinements")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(METHODS + ABLATIONS)} (default: "
                        "the first seven, and the ablation when the networks have attention "
                        "heads)")
    p.add_argument("--points", type=int, default=25, help="lambda grid size (default 25)")
    p.add_argument("--correction", default="none",
                   help="comma-separated corrections of the merged networks, each giving its "
                        "own rows: none, reset_bn (BatchNorm statistics), repair (REPAIR); "
                        "e.g. none,repair")
    p.add_argument("--correction-samples", type=int, default=1000,
                   help="training inputs the corrections measure statistics on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run)
