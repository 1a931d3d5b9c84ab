"""A picture of a zoo: the distribution of its per-model metric, split by split."""
from deepalign.zoo._reader import Zoo


def plot_zoo(zoo: Zoo, path: str) -> str:
    """Save a histogram of test accuracy (classifiers) or PSNR (INRs) per split as a PNG.

    Parameters
    ----------
    zoo : Zoo
    path : str
        Output file, e.g. ``zoo_dir/metrics.png``.

    Returns
    -------
    str
        ``path``.
    """
    # A bare Figure, not pyplot: no global backend switch and no import cost for the package.
    from matplotlib.figure import Figure

    name = zoo.main_metric
    value = dict(zip(zoo.indices, zoo.metric(name).tolist()))
    fig = Figure(figsize=(6, 3.5), dpi=120)
    ax = fig.subplots()
    lo, hi = min(value.values()), max(value.values())
    edges = [lo + (hi - lo + 1e-9) * k / 30 for k in range(31)]  # shared, so splits line up
    for split in sorted(zoo.split, key=["train", "val", "test"].index):
        indices = zoo.split[split]
        ax.hist([value[i] for i in indices if i in value], bins=edges, alpha=0.6,
                label=f"{split} ({len(indices)})")
    ax.set_xlabel({"test_acc": "test accuracy", "psnr": "PSNR (dB)"}[name])
    ax.set_ylabel("models")
    ax.set_title(f"{zoo.config['arch']} zoo on {zoo.dataset}: {len(zoo.records)} models")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
