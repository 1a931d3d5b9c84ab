"""Metric logs: a CSV file always, TensorBoard when asked for and installed."""
import csv
import os


class MetricLog:
    """Appends ``{step, name: value}`` rows to ``out/metrics.csv`` (long format: step, name,
    value), and mirrors them to TensorBoard with ``tensorboard=True``.

    On resume, rows after ``resume_step`` (logged after the last checkpoint, then lost with
    the kill) are dropped so that the file matches the restored state.
    """

    def __init__(self, out: str, tensorboard: bool = False, resume_step: int = None):
        self.path = os.path.join(out, "metrics.csv")
        rows = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "name", "value"])
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("tensorboard logging needs the `tensorboard` package "
                                   "(pip install tensorboard), or use the CSV log") from exc
            self.writer = SummaryWriter(os.path.join(out, "tensorboard"))

    def log(self, step: int, values: dict) -> None:
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            for name, value in values.items():
                writer.writerow([step, name, f"{float(value):.6g}"])
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out: str) -> dict:
    """``{name: [(step, value), ...]}`` from ``out/metrics.csv``."""
    series = {}
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            series.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return series
