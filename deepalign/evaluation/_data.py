"""Uniform access to evaluation/optimisation data: tensors, (x, y) pairs or loaders."""
from __future__ import annotations

import itertools

import torch


def _split(batch) -> tuple:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(
            isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1]
    raise TypeError("data must be a Tensor x, a pair (x, y) of Tensors, or an iterable of "
                    f"such batches; got a batch of type {type(batch).__name__}")


def _is_batch(data) -> bool:
    return isinstance(data, torch.Tensor) or (
        isinstance(data, (tuple, list)) and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data))


def _sample_axis(y: torch.Tensor, targets_per_pair: bool) -> int:
    if targets_per_pair and (y is None or y.dim() < 2):
        raise ValueError("data: targets_per_pair needs targets y of shape (pairs, N, ...), got "
                         + ("none" if y is None else f"shape {tuple(y.shape)}"))
    return 1 if targets_per_pair else 0


def iter_batches(data, batch_size: int | None = None, targets_per_pair: bool = False):
    """Yield ``(x, y)`` batches (``y`` is None for unlabelled data) covering ``data`` once.

    Parameters
    ----------
    data : Tensor (N, ...), pair (x (N, ...), y (N, ...)), or iterable of such batches
    batch_size : int, optional
        Split in-memory tensors into batches of this size (default: one batch).
    targets_per_pair : bool
        ``y`` is (pairs, N, ...): every pair has its own targets for the shared inputs ``x``
        (an INR pair's image); batches slice its second axis.
    """
    if _is_batch(data):
        x, y = _split(data)
        axis = _sample_axis(y, targets_per_pair)
        if y is not None and y.shape[axis] != len(x):
            raise ValueError(f"data: x has {len(x)} samples but y has {y.shape[axis]}")
        step = batch_size or max(len(x), 1)
        for start in range(0, len(x), step):
            yield x[start:start + step], None if y is None else y.narrow(
                axis, start, min(step, len(x) - start))
        return
    for batch in data:
        yield _split(batch)


def sample_batches(data, batch_size: int, generator: torch.Generator | None = None,
                   targets_per_pair: bool = False):
    """Endless stream of ``(x, y)`` batches: random subsets of in-memory data, or the batches
    of a loader cycled over (``targets_per_pair`` as in :func:`iter_batches`)."""
    if not _is_batch(data):
        yield from itertools.cycle(list(iter_batches(data, None, targets_per_pair)))
        return
    x, y = next(iter_batches(data, None, targets_per_pair))
    axis = 0 if y is None else _sample_axis(y, targets_per_pair)
    while True:
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        yield x[idx], None if y is None else y.index_select(axis, idx)
