"""Slow, obviously-correct pure-PyTorch versions of every deepalign op.

They are the test oracle, the benchmark baseline and the documented semantics. The fused
kernels in ``deepalign.ops`` share the docstrings below and must agree with these functions
to float tolerance on any valid input.
"""
import numpy as np
import scipy.optimize
import torch

SINKHORN_DOC = r"""Log-domain Sinkhorn projection onto (approximately) doubly-stochastic matrices.

    Starting from ``log P = scores / tau``, each of the ``n_iters`` iterations first normalises
    the columns and then the rows in log space::

        log P <- log P - logsumexp(log P, dim=-2)   # columns sum to 1
        log P <- log P - logsumexp(log P, dim=-1)   # rows sum to 1

    and the result is ``P = exp(log P)``. The marginals are all ones (row and column sums 1,
    not 1/n). ``n_iters = 0`` returns ``exp(scores / tau)``. This is the convention of the
    Deep-Align code (Navon et al., ICML 2024, §2.4 of our digest), where ``tau = 1`` and the
    temperature is learned through the scale of the scores.

    Parameters
    ----------
    scores : Tensor, shape (B, n, n) or (n, n)
        Real scores (higher = more likely matched); float32 or float64, finite.
    n_iters : int
        Number of (column, row) normalisation pairs, >= 0.
    tau : float
        Temperature, > 0.

    Returns
    -------
    P : Tensor, same shape and dtype as ``scores``
        Rows sum to 1 exactly (up to rounding) when ``n_iters >= 1``; columns approach 1
        as ``n_iters`` grows.
"""

LINEAR_ASSIGNMENT_DOC = r"""Exact linear assignment of a batch of cost matrices.

    For each matrix ``C`` of shape (n, m) with ``n <= m``, finds the injective map
    ``sigma : rows -> columns`` minimising (or, with ``maximize=True``, maximising)
    ``sum_i C[i, sigma(i)]``, as ``scipy.optimize.linear_sum_assignment`` does. ``+inf``
    (``-inf`` when maximising) marks a forbidden pair; a problem with no finite assignment
    is an error.

    Parameters
    ----------
    cost : Tensor, shape (B, n, m) or (n, m), n <= m
    maximize : bool

    Returns
    -------
    cols : LongTensor, shape (B, n) or (n,)
        ``cols[b, i]`` is the column assigned to row ``i``.
"""


def sinkhorn_project(scores: torch.Tensor, n_iters: int = 20, tau: float = 1.0) -> torch.Tensor:
    log_p = scores / tau
    for _ in range(n_iters):
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    return torch.exp(log_p)


sinkhorn_project.__doc__ = SINKHORN_DOC


def outer_sinkhorn_project(f0: torch.Tensor, f1: torch.Tensor, n_iters: int = 20,
                           tau: float = 1.0) -> torch.Tensor:
    """``sinkhorn_project(f0 @ f1.mT, n_iters, tau)``; f0, f1 of shape (B, n, d) or (n, d)."""
    return sinkhorn_project(f0 @ f1.mT, n_iters, tau)


def linear_assignment(cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    batch = cost.reshape(-1, *cost.shape[-2:]).detach().cpu().double().numpy()
    cols = np.stack([scipy.optimize.linear_sum_assignment(c, maximize=maximize)[1]
                     for c in batch]) if len(batch) else np.zeros((0, cost.shape[-2]), np.int64)
    return torch.from_numpy(cols).long().reshape(cost.shape[:-1]).to(cost.device)


linear_assignment.__doc__ = LINEAR_ASSIGNMENT_DOC


def hard_permutation(scores: torch.Tensor) -> torch.Tensor:
    """One-hot (…, n, n) permutation maximising ``<scores, P>`` (rounding of a soft plan)."""
    cols = linear_assignment(scores, maximize=True)
    return torch.nn.functional.one_hot(cols, scores.shape[-1]).to(scores.dtype)


def row_col_max(w: torch.Tensor) -> tuple:
    """Max of ``w`` (B, n, m, c) over each row and each column: (B, n, c), (B, m, c).

    Differentiable like ``torch.max(dim)``: a tied maximum's gradient goes to its first index.
    """
    return w.max(dim=2).values, w.max(dim=1).values


def linear_relu_pool(w: torch.Tensor, weight: torch.Tensor, row_bias: torch.Tensor,
                     col_bias: torch.Tensor, reduction: str = "mean",
                     keep_output: bool = True) -> tuple:
    """``y = relu(w @ weight + row_bias[:, :, None] + col_bias[:, None])`` for w (B, n, m, c_in)
    and its ``reduction`` ('mean' or 'max') over each row (B, n, c_out) and each column
    (B, m, c_out); ``y`` is replaced by an empty (0,) tensor unless ``keep_output``."""
    # in place on the fresh product: one entry-sized tensor (this is the path on GPUs)
    y = (w @ weight).add_(row_bias[:, :, None]).add_(col_bias[:, None]).relu_()
    pool = torch.mean if reduction == "mean" else torch.amax
    return (y if keep_output else y.new_empty(0)), pool(y, 2), pool(y, 1)


EDGE_MESSAGE_DOC = r"""Edge update and per-node aggregation of one message-passing step.

    For a graph of ``N`` nodes and ``E`` directed edges ``k: src[k] -> dst[k]``, shared by a
    batch of ``B`` networks (each network its own node and edge features)::

        msg[b, k]    = relu(x_src[b, src[k]] + x_dst[b, dst[k]] + edge[b, k])
        to_dst[b, v] = sum_{k : dst[k] = v} msg[b, k]
        to_src[b, u] = sum_{k : src[k] = u} msg[b, k]

    ``x_src = h W_s``, ``x_dst = h W_d`` and ``edge = e W_e + b`` are the linear terms of a
    layer's edge MLP, computed per node / per edge beforehand (``deepalign.nn.graph``); ``msg``
    is the updated edge feature and the two sums are what each node reads from its edges in
    either direction. A node with no edge gets zeros. Relabelling the nodes (and ``src``,
    ``dst`` with them) relabels the outputs: the step is permutation-equivariant.

    Parameters
    ----------
    x_src, x_dst : Tensor, shape (B, N, c)
    edge : Tensor, shape (B, E, c)
    src, dst : LongTensor, shape (E,)
        Values in ``[0, N)``. ``E = 0`` and ``B = 0`` are allowed.

    Returns
    -------
    msg : Tensor, shape (B, E, c)
    to_dst, to_src : Tensor, shape (B, N, c)

    NaN or inf in a value an edge reads is an error (``RuntimeError``) in the kernel.
"""


def edge_message_aggregate(x_src: torch.Tensor, x_dst: torch.Tensor, edge: torch.Tensor,
                           src: torch.Tensor, dst: torch.Tensor) -> tuple:
    msg = torch.relu(x_src[:, src] + x_dst[:, dst] + edge)
    to_dst = msg.new_zeros(x_dst.shape).index_add_(1, dst, msg)
    to_src = msg.new_zeros(x_src.shape).index_add_(1, src, msg)
    return msg, to_dst, to_src


edge_message_aggregate.__doc__ = EDGE_MESSAGE_DOC
