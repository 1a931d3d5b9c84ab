r"""``GraphLayer``: one permutation-equivariant message-passing layer over a ``WeightGraph``.

With node states ``h`` (B, N, c) and edge states ``e`` (B, E, c), edge ``k: u -> v``::

    m_k   = relu(h_u W_s + h_v W_d + e_k W_e + b_e)                    (edge update)
    a_v   = (1 / deg_in(v))  * sum_{k : dst k = v} m_k                  (from in-edges)
    a'_u  = (1 / deg_out(u)) * sum_{k : src k = u} m_k                  (from out-edges)
    h'_v  = LayerNorm(h_v + relu(h_v U + a_v V_in + a'_v V_out + b))
    e'_k  = e_k + m_k

The edge update and both sums are one fused op, ``deepalign.ops.edge_message_aggregate``: the
three linear terms are computed per node and per edge first (``N`` and ``E`` rows of a GEMM),
so the op never materialises the ``E x c`` gathers. Every term is a per-node or per-edge map or
a sum over a node's edges, so relabelling nodes along a graph isomorphism relabels the output:
the layer is equivariant to every automorphism of the (typed, featured) graph.
"""
import torch
from torch import nn

from deepalign import ops


class GraphLayer(nn.Module):
    """One message-passing layer (module docstring); ``channels`` in and out.

    Forward
    -------
    h : Tensor, (B, N, channels)
    e : Tensor, (B, E, channels)
    src, dst : LongTensor, (E,)
    inv_deg_in, inv_deg_out : Tensor, (N, 1)
        ``1 / max(1, degree)`` of each node as a destination / as a source.

    update_edges : bool
        False returns ``e`` itself as ``e'`` (for a last layer, whose edges nothing reads).

    Returns ``(h', e')`` of the same shapes.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.w_src = nn.Linear(channels, channels, bias=False)
        self.w_dst = nn.Linear(channels, channels, bias=False)
        self.edge = nn.Linear(channels, channels)
        self.self_term = nn.Linear(channels, channels)
        self.from_in = nn.Linear(channels, channels, bias=False)
        self.from_out = nn.Linear(channels, channels, bias=False)
        self.norm = nn.LayerNorm(channels)

    def forward(self, h, e, src, dst, inv_deg_in, inv_deg_out, update_edges: bool = True) -> tuple:
        msg, to_dst, to_src = ops.edge_message_aggregate(
            self.w_src(h), self.w_dst(h), self.edge(e), src, dst)
        update = (self.self_term(h) + self.from_in(to_dst * inv_deg_in)
                  + self.from_out(to_src * inv_deg_out))
        # the last layer's edge states are read by nothing: skip an (B, E, c) pass
        return self.norm(h + torch.relu(update)), (e + msg if update_edges else e)
