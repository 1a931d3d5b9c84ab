"""PNG of a training run: losses and validation metrics against the step."""
from deepalign.training._logging import read_metrics


def plot_training(out: str, path: str) -> None:
    """Draw ``out/metrics.csv`` to ``path``: training losses (left), validation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(out)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted(n for n in series if n.startswith("loss")):
        steps, values = zip(*series[name])
        left.plot(steps, values, label=name, lw=1)
    left.set(xlabel="step", ylabel="training loss", yscale="log", title="training")
    left.legend(fontsize=8)
    for name in sorted(n for n in series if n.startswith("val/")):
        steps, values = zip(*series[name])
        right.plot(steps, values, marker="o", label=name)
    right.set(xlabel="step", title="validation (held-out pairs, hard perms)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
