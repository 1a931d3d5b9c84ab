"""The comparison as people read it: a table, a JSON file and a PNG of the mean curves."""
from __future__ import annotations

import os
from collections.abc import Sequence

from deepalign._io import write_json_atomic
from deepalign.evaluation import plot_barrier_curves


def format_table(results: Sequence, title: str | None = None) -> str:
    """Markdown table: barrier and AUC (mean ± std over pairs), the accuracy barrier in points
    (classifiers), and seconds per pair."""
    n = results[0].curve.barrier.numel() if results else 0
    accuracy = any(r.curve.acc_barrier is not None for r in results)
    lines = [f"### {title}", ""] if title else []
    lines += [f"| method ({n} pairs) | barrier ↓ | AUC ↓ |" + (" acc. barrier (points) ↓ |"
                                                             if accuracy else "")
              + " s / pair ↓ |", "|---|---|---|" + ("---|" if accuracy else "") + "---|"]
    for r in results:
        s = r.summary()
        acc = (f" {100 * s['acc_barrier_mean']:.2f} ± {100 * s['acc_barrier_std']:.2f} |"
               if "acc_barrier_mean" in s else " – |") if accuracy else ""
        lines.append(f"| {s['label']} | {s['barrier_mean']:.4f} ± {s['barrier_std']:.4f} | "
                     f"{s['auc_mean']:.4f} ± {s['auc_std']:.4f} |{acc} "
                     f"{s['seconds_per_pair']:.4g} |")
    return "\n".join(lines)


def write_report(results: Sequence, out_dir: str, title: str, extra: dict | None = None) -> dict:
    """Write ``results.json``, ``curves.png`` and ``table.md`` into ``out_dir``.

    Returns the paths written, keyed by kind.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"),
             "png": os.path.join(out_dir, "curves.png"),
             "table": os.path.join(out_dir, "table.md")}
    write_json_atomic(paths["json"], {"title": title, **(extra or {}),
                                      "methods": [r.summary() for r in results]})
    plot_barrier_curves({r.label: r.curve for r in results}, paths["png"], title=title,
                        ylabel="test loss")
    with open(paths["table"], "w") as f:
        f.write(format_table(results, title) + "\n")
    return paths
