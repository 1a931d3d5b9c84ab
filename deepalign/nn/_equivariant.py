r"""The weight-space equivariant layer (DWS layer, Navon et al. 2023/2024), neuron-centric.

All four block families of the DWSNet layer with nearest-layer interactions ("diagonal"):

* **W -> W**: each weight entry is mapped by its layer's own linear map (the "entry" term of
  the 2-D exchangeable layer); its row and its column receive neuron-level terms that carry
  the row/column/all pools of the same weight and of the two adjacent weights.
* **W -> B**: the row pool of ``W_k`` and the column pool of ``W_{k+1}`` are features of the
  neurons of set ``k`` and reach ``b_k`` through the set layer.
* **B -> W**: ``b_k`` is a neuron feature of set ``k``; it reaches the rows of ``W_k`` and the
  columns of ``W_{k+1}``.
* **B -> B**: ``b_k`` by its own linear map plus the set layer over set ``k``.

Every interaction between the tensors of a network passes through one neuron set, so the
layer is written as: (1) per neuron set ``k`` gather the features
``h_k = [pool_in(W_k), pool_out(W_{k+1}), b_k]`` of shape (B, d_k, 2 c_w + c_b);
(2) one set layer over the sets (stacked parameters, each set at its own size, see ``_sets``)
gives per neuron a row term, a column term and a bias term; (3) broadcast them back:

.. math::
    W'_m[i, j] = W_m[i, j] A_m + r_m[i] + c_{m-1}[j], \qquad b'_m[i] = b_m[i] B_m + \beta_m[i].

The broadcasts are views (``unsqueeze`` + broadcasting add), never materialised copies, and
the parameters are stacked tensors indexed by layer: the module count does not grow with the
number of layers (let alone quadratically, as in the per-layer-pair original). The fixed sets
(inputs, outputs) are not permuted by the symmetry group; they get learned position
embeddings so that the encoder can tell input pixels and classes apart.
"""
import math

import torch
from torch import nn

from deepalign import ops
from deepalign.nn._downsample import InputDownsample
from deepalign.nn._sets import make_set_layer


def _row_col_pool(w: torch.Tensor, reduction: str) -> tuple:
    """``(pool over the input axis, pool over the output axis)`` of ``w`` (B, n, m, c)."""
    if reduction == "max":
        return ops.row_col_max(w)
    return w.mean(dim=2), w.mean(dim=1)


class WeightSpaceLayer(nn.Module):
    """One equivariant layer: ``(weights, biases)`` with ``c_w``/``c_b`` channels -> ``c_out``.

    Parameters
    ----------
    set_sizes : list[int]
        ``[d_0, ..., d_L]``: neurons per set (inputs, hidden..., outputs).
    c_w, c_b : int
        Input channels of the weights and of the biases.
    c_out : int
        Output channels (of both).
    set_layer : {'ds', 'sab'}
    heads : int
        Attention heads of 'sab'.
    reduction : {'max', 'mean'}
        Pooling over rows, columns and sets.
    downsample : int or None
        Reduce the first weight's input axis to this many learned slots (see
        :class:`InputDownsample`), so that only the pooling's cost grows with ``d_0``.
    readout : bool
        The encoder's last layer: compute only what its readout uses, the bias outputs of the
        hidden sets (no weight outputs, nothing for the input and output sets).
    unpool : bool
        With ``downsample``: spread the first weight back to full width (the paper's
        per-layer down/up-sampling). False: return it at ``downsample`` slots, for the
        following layers to work on directly (they get ``set_sizes[0] = downsample``).
    io_linear : bool
        Add to the neuron terms of the first hidden set a learned linear map of each neuron's
        incoming weights over all (fixed, full-width) inputs, and to those of the last hidden
        set one of its outgoing weights over the fixed outputs: the input- and output-indexed
        blocks of the DWS layer, which the position embeddings reach only through the
        nonlinearity of later layers. Hidden permutations permute these rows, so the layer
        stays equivariant.

    Shapes
    ------
    weights[m] : (B, d_{m+1}, d_m, c_w);  biases[m] : (B, d_{m+1}, c_b).
    """

    def __init__(self, set_sizes: list, c_w: int, c_b: int, c_out: int, set_layer: str = "ds",
                 heads: int = 8, reduction: str = "max", downsample: int = None,
                 readout: bool = False, unpool: bool = True, io_linear: bool = False):
        super().__init__()
        n_layers = len(set_sizes) - 1
        self.reduction, self.readout = reduction, readout
        self.downsample = (InputDownsample(c_w, c_out if unpool and not readout else None,
                                           downsample, set_sizes[0]) if downsample else None)
        sizes = list(set_sizes)
        if downsample:
            sizes[0] = downsample
        self.sizes = sizes
        c_h = 2 * c_w + c_b
        if readout:  # the input and output sets' features are never formed
            self.pos_in = self.pos_out = None
            self._register_load_state_dict_pre_hook(_drop_unread_embeddings)
        else:
            self.pos_in = nn.Parameter(torch.randn(sizes[0], c_h) * 0.1)
            self.pos_out = nn.Parameter(torch.randn(sizes[-1], c_h) * 0.1)
        self.sets = make_set_layer(set_layer, n_layers + 1, c_h, 3 * c_out, heads, reduction,
                                   hidden=c_out)
        std = math.sqrt(2.0) * math.sqrt(2.0 / (c_w + c_out))
        self.w_lin = None if readout else nn.Parameter(torch.randn(n_layers, c_w, c_out) * std)
        self.b_lin = nn.Parameter(torch.randn(n_layers, c_b, c_out) *
                                  math.sqrt(2.0) * math.sqrt(2.0 / (c_b + c_out)))
        self.c_out = c_out
        self.io_in = self.io_out = None
        if io_linear:
            width_in, width_out = set_sizes[0] * c_w, set_sizes[-1] * c_w
            self.io_in = nn.Parameter(torch.randn(width_in, 3 * c_out) / math.sqrt(width_in))
            self.io_out = nn.Parameter(torch.randn(width_out, 3 * c_out) / math.sqrt(width_out))

    def _io_terms(self, z: list, first: torch.Tensor, last: torch.Tensor) -> list:
        """``z`` with the ``io_linear`` maps of ``first`` (B, d_1, d_0, c_w; full width) and
        ``last`` (B, d_L, d_{L-1}, c_w) added to the first and last hidden sets' terms."""
        z = list(z)
        z[1] = z[1] + first.flatten(2) @ self.io_in.to(first.dtype)
        z[-2] = z[-2] + last.transpose(1, 2).flatten(2) @ self.io_out.to(last.dtype)
        return z

    def _neuron_features(self, weights: list, biases: list, pools: tuple = None) -> list:
        """Per set k, (B, d_k, 2 c_w + c_b): ``[pool_in(W_k), pool_out(W_{k+1}), b_k]``; None
        for the input and output sets of a readout layer. ``pools``: the weights' (rows, cols)
        pools when already known (then ``weights`` is not read)."""
        n_layers = len(biases)
        # rows[m] (B, d_out, c_w) is a feature of set m + 1, cols[m] (B, d_in, c_w) of set m
        rows, cols = pools or zip(*(_row_col_pool(w, self.reduction) for w in weights))
        b, c_w, c_b = biases[0].shape[0], rows[0].shape[-1], biases[0].shape[-1]
        feats = []
        for k in range(n_layers + 1):
            if self.readout and k in (0, n_layers):
                feats.append(None)
                continue
            d = self.sizes[k]
            row = rows[k - 1] if k > 0 else biases[0].new_zeros(b, d, c_w)
            col = cols[k] if k < n_layers else biases[0].new_zeros(b, d, c_w)
            bias = biases[k - 1] if k > 0 else biases[0].new_zeros(b, d, c_b)
            feats.append(torch.cat([row, col, bias], -1))
        if not self.readout:
            feats[0] = feats[0] + self.pos_in.to(feats[0].dtype)
            feats[-1] = feats[-1] + self.pos_out.to(feats[-1].dtype)
        return feats

    @property
    def can_fold(self) -> bool:
        """Whether :meth:`forward` can take ``relu_affine`` (not when it unpools its first
        weight: that output is not the matmul-plus-broadcasts the fold rewrites)."""
        return not self.readout and (self.downsample is None or self.downsample.skip is None)

    @property
    def reads_only_pools(self) -> bool:
        """Whether the layer reads its input weights only through their row and column pools
        (a readout without down-sampling): the layer before need not form them."""
        return self.readout and self.downsample is None

    def forward(self, weights: list, biases: list, pools: tuple = None,
                relu_affine: tuple = None, keep_weights: bool = True) -> tuple:
        """The layer: ``(weights, biases, pools)`` -> ``(new_weights, new_biases, new_pools)``.

        ``pools``: the input weights' (rows, cols) pools when the layer before computed them
        (``weights`` may then be None if :attr:`reads_only_pools`). With ``relu_affine =
        (scale, shift)`` (each (2 L, c_out) or None: weights first, then biases) the layer
        returns ``relu(out * scale + shift)`` per tensor instead: the eval-mode BatchNorm + ReLU
        that follows, folded into the linear maps and the neuron terms, so that no entry-sized
        pass is spent on it. The weights' entry pass (``ops.linear_relu_pool``) then also pools
        its output for the next layer (``new_pools``; otherwise None), and with
        ``keep_weights=False`` writes only those pools (``new_weights`` is None)."""
        if not keep_weights and relu_affine is None:
            raise ValueError("keep_weights=False needs relu_affine: only the folded pass pools "
                             "its output")
        full_first = None if weights is None else weights[0]
        if self.downsample is not None:
            slots, attn = self.downsample.pool(full_first)
            weights, pools = [slots] + list(weights[1:]), None  # the slots pool anew
        z = self.sets(self._neuron_features(weights, biases, pools))  # per set (B, d_k, 3 c_out)
        if self.io_in is not None:
            z = self._io_terms(z, full_first, weights[-1])
        dtype = biases[0].dtype
        b_lin = self.b_lin.to(dtype)
        if self.readout:  # the hidden sets' bias outputs, nothing else
            return None, [biases[m] @ b_lin[m] + z[m + 1][..., 2 * self.c_out:]
                          for m in range(len(biases) - 1)], None
        row, col, bias = zip(*(t.split(self.c_out, dim=-1) for t in z))
        n, w_lin = len(weights), self.w_lin.to(dtype)
        scale, shift = relu_affine if relu_affine is not None else (None, None)
        pick = lambda p, t: None if p is None else p[t].to(dtype)  # noqa: E731
        finish = (lambda x: x) if relu_affine is None else torch.relu_  # noqa: E731
        new_b = []
        for m in range(n):
            s, t = pick(scale, n + m), pick(shift, n + m)
            new_b.append(finish(biases[m] @ _affine(b_lin[m], s) + _affine(bias[m + 1], s, t)))
        if relu_affine is not None:
            passes = []
            for m, w in enumerate(weights):
                s, t = pick(scale, m), pick(shift, m)
                passes.append(ops.linear_relu_pool(w, _affine(w_lin[m], s),
                                                   _affine(row[m + 1], s, t),
                                                   _affine(col[m], s), self.reduction,
                                                   keep_weights))
            new_w, rows, cols = zip(*passes)
            return (list(new_w) if keep_weights else None), new_b, (list(rows), list(cols))
        new_w = []
        for m, w in enumerate(weights):
            # in place on the fresh matmul output: no extra entry-sized tensors
            out = w @ w_lin[m]
            out.add_(row[m + 1][:, :, None, :]).add_(col[m][:, None])
            new_w.append(out)
        if self.downsample is not None and self.downsample.skip is not None:
            new_w[0] = self.downsample.unpool(new_w[0], attn, full_first)
        return new_w, new_b, None


def _affine(x: torch.Tensor, scale: torch.Tensor = None, shift: torch.Tensor = None):
    """``x * scale + shift`` over the channel (last) axis; None skips a part."""
    x = x if scale is None else x * scale
    return x if shift is None else x + shift


def _drop_unread_embeddings(state_dict, prefix, *_):
    # files saved before readout layers lost their never-read input/output embeddings
    for name in ("pos_in", "pos_out"):
        state_dict.pop(prefix + name, None)
