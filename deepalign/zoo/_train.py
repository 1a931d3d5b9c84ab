"""Train many small models at once as one vectorised computation.

Every model owns a seed (derived from the zoo seed and its index) that fixes its
initialisation, its hyper-parameters (drawn from the ranges in :class:`TrainSettings`) and
the order in which it sees the training data. Models are independent: the batched loss is
the sum of the per-model mean losses, so each model receives exactly its own gradient, and
AdamW runs element-wise with a per-model learning rate and weight decay. The forward pass
is :func:`deepalign.models.batched_forward`: ``torch.func.vmap`` over ``functional_call`` for
any architecture, and for MLPs and CNNs the same numbers as explicit batched matrix products
and grouped convolutions (MLP steps 1.4-1.8x faster than vmap). In ``benchmarks/bench_zoo.py``
200 digits MLPs trained 35-106x faster this way than one ``nn.Module`` at a time, 16 digits
CNNs 2.5x, and 256 Fashion-MNIST MLPs 784-64-64-10 took 234 s for 5 epochs.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepalign.data import ImageDataset
from deepalign.evaluation._forward import eval_mode
from deepalign.models import batched_forward, build_model
from deepalign.zoo._optim import StackedAdamW


def model_seed(seed: int, index: int) -> int:
    """The seed of model ``index`` in a zoo made with ``seed`` (independent of chunking)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _check_range(name: str, value, low: float) -> tuple:
    lo, hi = (float(value), float(value)) if np.isscalar(value) else map(float, value)
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi):
        raise ValueError(f"{name} must be a value or a range lo <= hi with lo >= {low}, "
                         f"got {value}")
    return lo, hi


@dataclass(frozen=True)
class TrainSettings:
    """How each model of a zoo is trained.

    Parameters
    ----------
    epochs : int
        Passes over the training set (the same for all models).
    batch_size : int
        Images per step (the same for all models; each model draws its own images).
    lr : float or (float, float)
        AdamW learning rate, or a range it is drawn from log-uniformly per model.
    weight_decay : float or (float, float)
        Decoupled weight decay, or a range it is drawn from uniformly per model.
    schedule : {"constant", "cosine"}
        Learning rate over the steps ``t = 0 .. T-1``: constant, or ``lr (1 + cos(pi t / T)) / 2``
        (the decay of the weight decay follows, as in ``torch.optim.AdamW`` under a scheduler).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: tuple = (1e-3, 1e-3)
    weight_decay: tuple = (0.0, 0.0)
    schedule: str = "constant"

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        object.__setattr__(self, "epochs", int(self.epochs))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "lr", _check_range("lr", self.lr, 1e-12))
        object.__setattr__(self, "weight_decay",
                           _check_range("weight_decay", self.weight_decay, 0.0))

    def to_json(self) -> dict:
        """The settings as plain JSON (ranges become lists; a constant schedule is left out, so
        zoos made before schedules existed keep their header)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if (k, v) != ("schedule", "constant")}

    def lr_factor(self, step: int, total: int) -> float:
        """The schedule's multiplier of the learning rate at ``step`` of ``total``."""
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / total))

    def sample(self, generator: torch.Generator) -> tuple:
        """Draw one model's ``(lr, weight_decay)``."""
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        lo, hi = self.lr
        lr = math.exp(math.log(lo) + u[0] * (math.log(hi) - math.log(lo)))
        wd = self.weight_decay[0] + u[1] * (self.weight_decay[1] - self.weight_decay[0])
        return lr, wd


def _init(config: dict, seeds: list) -> tuple:
    """Per-model initial weights (stacked), generators, and the template module."""
    generators, state_dicts = [], []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            state_dicts.append(build_model(config).state_dict())
        generators.append(torch.Generator().manual_seed(s))
    stacked = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    return build_model(config), stacked, generators


@torch.no_grad()
def evaluate_classifiers(model, stacked: dict, X: torch.Tensor, y: torch.Tensor,
                         chunk: int = 1000) -> tuple:
    """Mean cross-entropy and accuracy of every model on ``(X, y)``, in eval mode.

    BatchNorm uses the stacked running statistics, which stay unchanged.

    Returns
    -------
    loss, acc : Tensor, shape (B,), float64
    """
    B = next(iter(stacked.values())).shape[0]
    loss, correct = torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    for start in range(0, len(y), chunk):
        with eval_mode(model):
            scores = batched_forward(model, stacked, X[start:start + chunk]).transpose(1, 2)
        target = y[start:start + chunk].expand(B, -1)  # scores: (B, classes, n)
        loss += F.cross_entropy(scores, target, reduction="none").sum(1).double()
        correct += (scores.argmax(1) == target).sum(1).double()
    return loss / len(y), correct / len(y)


def fit(config: dict, seeds: list, settings: TrainSettings, X: torch.Tensor, Y: torch.Tensor,
        loss_fn, per_model_targets: bool = False, on_epoch=None) -> tuple:
    """Train one model per seed on samples ``(X[i], Y[i])`` (or ``Y[b, i]``), all at once.

    Each epoch, every model visits the ``n`` samples in its own random order, ``batch_size``
    per step. AdamW updates the parameters only; the forward runs in train mode, so BatchNorm
    normalises with batch statistics and updates the running statistics (buffers) itself.

    Parameters
    ----------
    config : dict
        Architecture (``model.config``).
    seeds : list of int
        One per model (see :func:`model_seed`).
    settings : TrainSettings
    X : Tensor, shape (n, *input_shape)
        Inputs shared by all models.
    Y : Tensor, shape (n, ...), or (B, n, ...) if ``per_model_targets``
        Targets shared by all models, or one target set per model.
    loss_fn : callable
        ``(outputs (B, batch, ...), targets (B, batch, ...)) → (B,)`` per-model mean loss.
    per_model_targets : bool
    on_epoch : callable, optional
        Called with the number of models after each epoch (for progress bars).

    Returns
    -------
    model : nn.Module
        The architecture (for :func:`batched_forward`).
    stacked : dict of str to Tensor, each shape (B, *shape)
        The full stacked state dict: parameters and buffers.
    hparams : list of (lr, weight_decay)
    """
    model, stacked, generators = _init(config, seeds)
    model.train()
    hparams = [settings.sample(g) for g in generators]
    names = {name for name, _ in model.named_parameters()}
    opt = StackedAdamW({k: v for k, v in stacked.items() if k in names},
                       torch.tensor([h[0] for h in hparams]),
                       torch.tensor([h[1] for h in hparams]))
    buffers = {k: v.clone() for k, v in stacked.items() if k not in names}
    B, n = len(seeds), X.shape[0]
    rows = torch.arange(B).unsqueeze(1)
    # One buffer for every step's inputs: a fresh (B, batch, ...) tensor is tens of MB, which
    # the allocator maps and page-faults anew each step (5x slower than this gather).
    batch = X.new_empty((B * min(settings.batch_size, n), *X.shape[1:]))
    steps = settings.epochs * math.ceil(n / settings.batch_size)
    for epoch in range(settings.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in generators])  # (B, n)
        for i, idx in enumerate(order.split(settings.batch_size, dim=1)):
            x = torch.index_select(X, 0, idx.flatten(), out=batch[:idx.numel()])
            out = batched_forward(model, {**opt.params(), **buffers},
                                  x.view(*idx.shape, *X.shape[1:]), per_model_inputs=True)
            step = epoch * math.ceil(n / settings.batch_size) + i
            opt.step(loss_fn(out, Y[rows, idx] if per_model_targets else Y[idx]),
                     settings.lr_factor(step, steps))
        bad = opt.diverged()
        if bad:
            raise FloatingPointError(f"training diverged (non-finite weights) for seeds "
                                     f"{[seeds[i] for i in bad][:5]} with lr "
                                     f"{[round(hparams[i][0], 6) for i in bad][:5]}; lower the lr")
        if on_epoch is not None:
            on_epoch(len(seeds))
    trained = {**opt.state_dict(), **buffers}
    return model, {k: trained[k] for k in stacked}, hparams


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)


def train_classifiers(config: dict, data: ImageDataset, seeds: list, settings: TrainSettings,
                      on_epoch=None) -> tuple:
    """Train ``len(seeds)`` classifiers of one architecture together (cross-entropy, AdamW).

    Parameters
    ----------
    config : dict
        Architecture (``model.config``).
    data : ImageDataset
    seeds : list of int
        One per model (see :func:`model_seed`).
    settings : TrainSettings
    on_epoch : callable, optional
        Called with the number of models after each epoch (for progress bars).

    Returns
    -------
    stacked : dict of str to Tensor, each shape (B, *param_shape)
        The trained weights.
    records : list of dict
        Per model: ``seed``, ``lr``, ``weight_decay``, ``train_loss``, ``train_acc``,
        ``test_loss``, ``test_acc`` (losses are mean cross-entropy over the whole split).
    """
    model, stacked, hparams = fit(config, seeds, settings, data.X_train, data.y_train,
                                  _cross_entropy, on_epoch=on_epoch)
    train_loss, train_acc = evaluate_classifiers(model, stacked, data.X_train, data.y_train)
    test_loss, test_acc = evaluate_classifiers(model, stacked, data.X_test, data.y_test)
    return stacked, [{"seed": seeds[i], "lr": hparams[i][0], "weight_decay": hparams[i][1],
                      "train_loss": train_loss[i].item(), "train_acc": train_acc[i].item(),
                      "test_loss": test_loss[i].item(), "test_acc": test_acc[i].item()}
                     for i in range(len(seeds))]
