"""Label-free training of ``DeepAlign`` on a model zoo (Navon et al., ICML 2024, §3).

One step: ``batch_size`` items, each a zoo network ``v`` with a labelled partner
``t # aug(v)`` and an unlabelled partner (another zoo network), as the official code's item;
all ``3 * batch_size`` networks are encoded in one call (``v`` once for both pairs).
Loss ``= w_s * supervised + w_a * alignment + w_i * interpolation`` (``_losses``), AdamW,
gradient-norm clipping. With ``distill_weight > 0`` the unlabelled partners come from a bank of
training pairs solved once by weight matching + Sinkhorn re-basin (``_distill``, cached in
``targets.pt``), and ``w_d * distillation`` pulls the aligner's plans towards their perms.
Losses of weight 0 are not computed; with ``w_s = 0`` the labelled partners are not encoded.
Every ``eval_every`` steps the validation barrier
(``BarrierValidator``) selects ``best.pt``; every ``checkpoint_every`` steps ``checkpoint.pt``
is written atomically so that ``resume=True`` after a kill repeats at most that many steps.
The pairs, images and interpolation weights of step ``s`` on rank ``r`` come from a generator
seeded with ``(seed, s, r)``: a run is deterministic and resumes bit-for-bit.

Under ``torchrun --nproc_per_node N`` the same call trains data-parallel (DDP; gloo on CPU,
NCCL on GPU), each rank drawing ``batch_size / N`` items; rank 0 validates and writes files.
"""
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from deepalign.nn import DeepAlign
from deepalign.training._allocator import keep_freed_memory
from deepalign.training._augment import INPUT_MIXINGS, Augmentation, mix_inputs
from deepalign.training._checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint
from deepalign.training._distill import distillation_loss, distillation_targets
from deepalign.training._distributed import (barrier_if_distributed,
                                             broadcast_buffers, distributed,
                                             max_divergence, rank_max)
from deepalign.training._logging import MetricLog
from deepalign.training._losses import alignment_loss, interpolation_loss, supervised_loss
from deepalign.training._pairs import PairSampler
from deepalign.training._plot import plot_training
from deepalign.training._selection import BarrierValidator
from deepalign.training._task_data import TaskData, task_data
from deepalign.weightspace import permute
from deepalign.zoo import Zoo


_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
# the learning rate's factor as a function of the fraction of the run done (``run_fraction``)
_SCHEDULES = {"constant": lambda done: 1.0,
              "cosine": lambda done: 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the encoder's are an ``EncoderConfig``).

    ``time_limit``: stop (validate, checkpoint, save) after this many minutes of wall time
    (0: run all ``steps``); the clock survives ``resume``. ``lr_schedule``: 'constant' (the
    authors' choice) or 'cosine', which decays ``lr`` to 0 at step ``steps`` or, with a
    ``time_limit``, at the limit if that comes first (``run_fraction``). ``precision``: the
    encoder's activations while training, 'float32' or 'bfloat16' (mixed precision: float32
    master weights, optimiser and losses; see ``DeepAlign.embed``). Validation always runs in
    float32.

    ``distill_weight``: weight of the distillation loss (0: off, the paper's training). Then
    ``distill_pairs`` training pairs are solved before the first step by weight matching and
    ``distill_steps`` steps of Sinkhorn re-basin (0: weight matching alone), each step's
    unlabelled partners are drawn from them, and the cross-entropy of the aligner's plans
    (``distill_iters`` Sinkhorn iterations at ``tau``) against their perms joins the loss. The
    targets' compute time counts towards ``time_limit``.

    ``input_mixing``: 'none', 'permutation' or 'signed-permutation': the aligner sees each
    item's three networks with one random transform of their input space (``mix_inputs``),
    the losses the originals.
    """

    steps: int = 1500
    batch_size: int = 32
    image_batch: int = 128
    lr: float = 2e-3
    lr_schedule: str = "constant"
    weight_decay: float = 5e-4
    clip: float = 1.0
    supervised_weight: float = 1.0
    alignment_weight: float = 1.0
    interpolation_weight: float = 1.0
    sinkhorn_iters: int = 20
    tau: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 50
    val_pairs: int = 32
    val_images: int = 1024
    val_points: int = 11
    seed: int = 0
    time_limit: float = 0.0
    precision: str = "float32"
    distill_weight: float = 0.0
    distill_pairs: int = 2048
    distill_steps: int = 300
    distill_iters: int = 20
    augmentation: dict = field(default_factory=lambda: asdict(Augmentation()))
    input_mixing: str = "none"

    def __post_init__(self):
        for name in ("steps", "batch_size", "image_batch", "eval_every", "checkpoint_every",
                     "val_pairs", "sinkhorn_iters", "distill_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.distill_steps < 0 or self.distill_iters < 0:
            raise ValueError("distill_steps and distill_iters must be >= 0")
        weights = {name: getattr(self, name + "_weight")
                   for name in ("supervised", "alignment", "interpolation", "distill")}
        if min(weights.values()) < 0 or max(weights.values()) == 0:
            raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")
        Augmentation(**self.augmentation)
        if self.input_mixing not in INPUT_MIXINGS:
            raise ValueError(f"input_mixing must be one of {INPUT_MIXINGS}, "
                             f"got {self.input_mixing!r}")
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, "
                             f"got {self.precision!r}")


def run_fraction(step: int, elapsed: float, config: TrainConfig) -> float:
    """How much of the run is done after ``step`` steps and ``elapsed`` seconds: of its steps,
    or of its time limit where that is nearer (so that a time-limited run's learning-rate
    schedule ends with its clock, whatever the speed of the machine)."""
    done = step / config.steps
    if config.time_limit:
        done = max(done, elapsed / (config.time_limit * 60))
    return done


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one step on one rank (a fixed mix of the three integers)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


class _StepLoss(torch.nn.Module):
    """The aligner plus the loss of one batch, as one module DDP can wrap."""

    def __init__(self, aligner: DeepAlign, spec, config: TrainConfig, loss_fn=None):
        super().__init__()
        self.aligner, self.config, self.loss_fn = aligner, config, loss_fn
        self.spec = spec
        self.keys = aligner.weight_keys

    def forward(self, batch, task_model, x, y, lam, seen=None) -> tuple:
        """``seen``: what the aligner encodes instead of ``(a, labelled_b, unlabelled_b)``
        (their input-mixed copies); the losses use the batch's networks. A loss of weight 0
        is not computed, and without the supervised loss the labelled partners are not
        encoded (the encoder is most of a step's cost)."""
        cfg = self.config
        seen = seen or (batch.a, batch.labelled_b, batch.unlabelled_b)
        supervised = cfg.supervised_weight > 0
        embedded = self.aligner.embed(*(seen if supervised else (seen[0], seen[2])),
                                      dtype=_PRECISIONS[cfg.precision])
        emb_a, emb_unl = embedded[0], embedded[-1]
        parts, loss = {}, 0.0
        if supervised:
            parts["supervised"] = supervised_loss(
                self.aligner.logits(emb_a, embedded[1], cfg.sinkhorn_iters, cfg.tau),
                batch.target)
            loss = cfg.supervised_weight * parts["supervised"]
        if cfg.alignment_weight > 0 or cfg.interpolation_weight > 0:
            plans = self.aligner.plans(emb_a, emb_unl, cfg.sinkhorn_iters, cfg.tau)
            aligned = permute(batch.unlabelled_b, self.spec, plans)
            if cfg.alignment_weight > 0:
                parts["alignment"] = alignment_loss(batch.a, aligned, self.keys)
                loss = loss + cfg.alignment_weight * parts["alignment"]
            if cfg.interpolation_weight > 0:
                parts["interpolation"] = interpolation_loss(task_model, batch.a, aligned, x, y,
                                                            lam, self.loss_fn)
                loss = loss + cfg.interpolation_weight * parts["interpolation"]
        if batch.distill_target is not None:
            logits = self.aligner.logits(emb_a, emb_unl, cfg.sinkhorn_iters, cfg.tau)
            parts["distillation"] = distillation_loss(logits, batch.distill_target,
                                                      cfg.distill_iters, cfg.tau)
            loss = loss + cfg.distill_weight * parts["distillation"]
        return loss, parts


def train(zoo, out: str, encoder="default", config: TrainConfig = TrainConfig(),
          resume: bool = False, device="cpu", progress: bool = True, tensorboard: bool = False,
          plot: bool = True, **encoder_overrides) -> DeepAlign:
    """Train a ``DeepAlign`` aligner on a zoo; returns it (final weights, eval mode).

    Classifier zoos pair any two networks and score interpolations on the training images; INR
    zoos pair views of one image and score them against it (``TaskData``). On the CPU it calls
    :func:`keep_freed_memory`: the process then keeps its peak heap until it exits.

    Parameters
    ----------
    zoo : str or deepalign.zoo.Zoo
    out : str
        Run directory: ``checkpoint.pt``, ``best.pt`` (lowest validation barrier),
        ``final.pt``, ``metrics.csv``, ``curves.png``. Under DDP the replicas are checked to
        be identical at the end (``ddp/max_divergence`` in the metrics; an error otherwise).
    encoder : str, dict, EncoderConfig or GraphEncoderConfig
        Preset name ('default', 'paper'), 'graph' (the graph encoder, any architecture) or
        configuration of the encoder.
    config : TrainConfig
    resume : bool
        Continue from ``out/checkpoint.pt`` (error if there is none).
    device : str or torch.device
    progress, tensorboard : bool
    plot : bool
        Draw ``out/curves.png`` at the end.
    **encoder_overrides
        ``EncoderConfig`` fields.
    """
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    with distributed(torch.device(device)) as (rank, world, device):
        return _train_on_rank(zoo, out, encoder, config, resume, rank, world, device, progress,
                              tensorboard, plot, encoder_overrides)


def _check_same_encoder(saved, current: dict, out: str) -> None:
    """A checkpoint resumes only into the encoder it was trained with (a run folder from before
    a changed default, e.g. ``deepalign demo``'s, would otherwise fail on missing weights).
    Options newer than the checkpoint, which it lacks, are taken to be at their defaults."""
    changed = ", ".join(f"{k}={v!r} (now {current.get(k)!r})"
                        for k, v in sorted((saved or {}).items()) if current.get(k) != v)
    if not changed:
        return
    raise ValueError(f"resume: {os.path.join(out, CHECKPOINT)} was trained with another encoder: "
                     f"{changed}; pass the same encoder options or use a new output folder")


def _train_on_rank(zoo, out, encoder, config, resume, rank, world, device, progress,
                   tensorboard, plot, encoder_overrides) -> DeepAlign:
    train_task = task_data(zoo, zoo.split["train"])
    if device.type == "cpu":
        keep_freed_memory()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{world} data-parallel ranks")
    task_model = zoo.build_model().to(device)
    spec = zoo.spec()
    train_nets = {k: v.to(device) for k, v in zoo.stacked(zoo.split["train"]).items()}
    torch.manual_seed(config.seed)
    aligner = DeepAlign.from_spec(spec, train_nets, encoder, **encoder_overrides).to(device)
    aligner.task = {"model": zoo.config, "dataset": zoo.dataset}
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay, amsgrad=True)
    start, best, elapsed = 0, {"barrier": float("inf"), "step": -1}, 0.0
    if resume:
        state = load_checkpoint(out, map_location=device)
        if state is None:
            raise FileNotFoundError(f"resume: no checkpoint in {out}")
        _check_same_encoder(state.get("encoder"), aligner.config.to_dict(), out)
        aligner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, elapsed = int(state["step"]), dict(state["best"]), float(state["elapsed"])
    augmentation = Augmentation(**config.augmentation)
    if zoo.config["arch"] == "siren":  # sin is not positively homogeneous: no rescaling
        augmentation = replace(augmentation, pos_scale=0.0)
    targets = None
    if config.distill_weight > 0:
        targets = _distillation_targets(zoo, spec, train_nets, train_task, config, out,
                                        rank == 0, progress)
        if not resume:
            elapsed = targets.seconds
    chain = aligner.layout
    if chain is None:  # graph aligner: augment the parameters (not BatchNorm statistics)
        chain = [name for name, _ in task_model.named_parameters()]
        augmentation = replace(augmentation, pos_scale=0.0)  # rescaling needs a layer chain
    sampler = PairSampler(train_nets, spec, chain, augmentation,
                          groups=train_task.groups, targets=targets)
    train_task = train_task.to(device)
    step_loss = _StepLoss(aligner, spec, config, train_task.loss_fn)
    runner = step_loss if world == 1 else DistributedDataParallel(step_loss)
    lead = rank == 0
    log = validator = None
    if lead:
        os.makedirs(out, exist_ok=True)
        log = MetricLog(out, tensorboard, resume_step=start if resume else None)
        val_data = (task_data(zoo, zoo.split["val"]).to(device) if zoo.fits_images else
                    TaskData(train_task.x[:config.val_images], train_task.y[:config.val_images]))
        val_nets = {k: v.to(device) for k, v in zoo.stacked(zoo.split["val"]).items()}
        validator = BarrierValidator(val_nets, spec, task_model, val_data, config.val_pairs,
                                     config.val_points, config.seed)
    per_rank = config.batch_size // world
    # a time-limited run ends by the clock: no step total to show
    bar = tqdm(range(start, config.steps), desc="train deep-align", disable=not (progress and lead),
               initial=start, total=float("inf") if config.time_limit else config.steps)
    aligner.train()
    done = start
    for step in bar:
        tick = time.perf_counter()
        gen = step_generator(config.seed, step, rank)
        batch = sampler.sample(per_rank, gen)
        pick = torch.randint(len(train_task.x), (config.image_batch,), generator=gen).to(device)
        lam = torch.rand(per_rank, generator=gen)
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen)))  # dropout
        seen = None
        if config.input_mixing != "none":
            seen = tuple(mix_inputs([batch.a, batch.labelled_b, batch.unlabelled_b], chain,
                                    config.input_mixing, gen))
        loss, parts = runner(batch, task_model, train_task.x[pick],
                             train_task.targets(batch.index, pick), lam.to(device), seen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: training loss is {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(aligner.parameters(), config.clip)
        # rank 0's clock would do, but every rank must take the same learning rate
        fraction = run_fraction(step, rank_max(elapsed, device), config)
        lr = config.lr * _SCHEDULES[config.lr_schedule](fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        done, seconds = step + 1, time.perf_counter() - tick
        elapsed += seconds
        last = done == config.steps or 0 < config.time_limit * 60 <= rank_max(elapsed, device)
        if lead:
            log.log(done, {"loss": loss.detach(),
                           **{f"loss/{k}": v.detach() for k, v in parts.items()},
                           "grad_norm": grad_norm, "lr": lr,
                           "pairs_per_s": 2 * per_rank * world / seconds,
                           "time_s": elapsed})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if done % config.eval_every == 0 or last:
                best = _validate(aligner, validator, log, done, best, out)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{best['last']:.3f}")
            if done % config.checkpoint_every == 0 or last:
                save_checkpoint(out, aligner, optimizer, done, best, asdict(config), elapsed)
        barrier_if_distributed()
        elapsed += time.perf_counter() - tick - seconds  # validation and checkpoint time
        if last:
            break
    aligner.eval()
    divergence = None
    if world > 1:
        broadcast_buffers(aligner)
        divergence = max_divergence(aligner)
    if lead:
        if divergence is not None:
            log.log(done, {"ddp/max_divergence": divergence})
        aligner.save(os.path.join(out, "final.pt"))
        log.close()
        if plot:
            plot_training(out, os.path.join(out, "curves.png"))
    if divergence:
        raise RuntimeError(f"data-parallel replicas diverged (max |diff| {divergence:.3g})")
    return aligner


def _distillation_targets(zoo, spec, nets, task, config, out, lead, progress):
    """The solved training pairs, computed on rank 0 (on the CPU) and cached in
    ``out/targets.pt``."""
    if zoo.fits_images:
        raise ValueError("distillation targets need a classifier zoo (INR views pair only "
                         "with views of their own image)")
    path = os.path.join(out, "targets.pt")
    nets = {k: v.cpu() for k, v in nets.items()}
    args = (nets, spec, zoo.build_model(), (task.x.cpu(), task.y.cpu()))
    kwargs = dict(n_pairs=config.distill_pairs, sinkhorn_steps=config.distill_steps,
                  seed=config.seed, path=path, loss_fn=task.loss_fn)
    if lead:
        os.makedirs(out, exist_ok=True)
        distillation_targets(*args, progress=progress, **kwargs)
    barrier_if_distributed()
    return distillation_targets(*args, **kwargs)  # reads the finished file


def _validate(aligner, validator, log, step: int, best: dict, out: str) -> dict:
    result = validator(aligner)
    log.log(step, {f"val/{k}": v for k, v in result.items()})
    best = dict(best, last=result["barrier"])
    if result["barrier"] < best["barrier"]:
        best.update(barrier=result["barrier"], step=step, exact=result["exact"])
        aligner.save(os.path.join(out, BEST))
    return best
