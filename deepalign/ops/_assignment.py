"""Exact batched linear assignment and hard rounding of score matrices."""
import torch

from deepalign.ops._checks import as_batch, check_matrices
from deepalign.ops._extension import extension_loaded, require_extension
from deepalign.ops.reference import LINEAR_ASSIGNMENT_DOC

_OPS = torch.ops.deepalign


def linear_assignment(cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    require_extension()
    check_matrices(cost, "cost")
    if cost.shape[-2] > cost.shape[-1]:
        raise ValueError(f"cost must have no more rows than columns (n <= m), got shape "
                         f"{tuple(cost.shape)}; transpose it")
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be a bool, got {type(maximize).__name__}")
    cols = _OPS.linear_assignment(as_batch(cost.detach()), maximize)
    return cols[0] if cost.dim() == 2 else cols


linear_assignment.__doc__ = LINEAR_ASSIGNMENT_DOC.rstrip() + r"""

    Notes
    -----
    On CPU, augmenting row reduction (Jonker-Volgenant) settles most rows with one scan each,
    then shortest augmenting paths (Crouse's form, as scipy) place the rest, in float64; problems
    are handed to threads one at a time. Ties are broken deterministically, and the result does
    not depend on the thread count. Not differentiable: the result never requires grad.

    On CUDA, shortest augmenting paths after a row-reduction warm start run one thread block per
    problem, with the Dijkstra scans over the columns parallel across the block; CUDA tensors
    in, CUDA tensors out. Hungarian-rounding fallback: a problem too wide for one block's shared
    memory (m above about 9000 columns) is solved by the CPU kernel instead, with one
    device-to-host copy of the whole batch.
"""


def hard_permutation(scores: torch.Tensor) -> torch.Tensor:
    r"""The permutation matrix maximising ``<scores, P>``: hard rounding of a soft plan.

    Rounding a Sinkhorn plan ``P`` by ``max sum_i log P[i, s(i)]`` is the same problem on the
    scores it came from, since the potentials add the same constant to every permutation.

    Parameters
    ----------
    scores : Tensor, shape (B, n, n) or (n, n)
        float32 or float64; ``-inf`` forbids a pair, NaN and ``+inf`` are errors.

    Returns
    -------
    P : Tensor, same shape and dtype as ``scores``
        One-hot rows and columns, ``P[b, i, linear_assignment(scores, True)[b, i]] = 1``. Not
        differentiable.
    """
    require_extension()
    check_matrices(scores, "scores", square=True)
    p = _OPS.hard_permutation(as_batch(scores.detach()))
    return p[0] if scores.dim() == 2 else p


def _register() -> None:
    torch.library.register_fake("deepalign::linear_assignment")(
        lambda cost, maximize: cost.new_empty(cost.shape[:-1], dtype=torch.long))
    torch.library.register_fake("deepalign::hard_permutation")(
        lambda scores: torch.empty_like(scores, memory_format=torch.contiguous_format))


if extension_loaded():
    _register()
