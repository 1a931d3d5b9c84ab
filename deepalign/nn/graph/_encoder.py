r"""``GraphEncoder``: per-unit embeddings of a batch of networks from their ``WeightGraph``.

Design, against the three graph/universal weight-space encoders it borrows from:

* **Graph Metanetworks** (Lim et al., ICLR 2024) build a "parameter graph" (a node per neuron,
  an edge per weight, kernels as edge features) and run a message-passing network on it, which
  is equivariant to the graph's automorphisms. We keep the parameter graph and the
  edge-and-node-updating MPNN, but read the graph off the ``PermutationSpec`` instead of
  hand-written constructions per layer type: a residual stream is *one* node set because the
  spec ties it to one perm, a BatchNorm's four vectors are node features of the units they
  scale, and attention heads / convolution groups get block nodes (``_graph.py``).
* **Neural Graphs** (Kofinas et al., ICLR 2024) add learned positional embeddings to input and
  output neurons so that only hidden neurons are exchangeable; without them the encoder is
  equivariant to relabellings of the inputs, which are no symmetry. We do the same for every
  ``fixed`` unit, and give every *set* (each perm, each block group) a learned type embedding:
  units of different perms are never exchanged by the true group either. Their PNA-style
  aggregators are replaced by degree-normalised sums in both edge directions (one fused op);
  Deep-Align needs a light encoder it runs on both networks of every pair.
* **Universal Neural Functionals** (Zhou et al., NeurIPS 2024) derive the *maximal* family of
  equivariant linear maps from which axes each perm acts on. That basis grows with the number
  of tensor pairs sharing a perm and needs every tensor's axes enumerated per layer; message
  passing is less expressive per layer but linear in the number of weights, shares its
  parameters across architectures' layer types, and covers weight tying and block groups
  through the graph alone.

Equivariance, and no more. Node ``i`` of perm ``P`` in ``g # v`` sees exactly the
neighbourhood node ``g_P[i]`` sees in ``v`` (``_graph.py``), and every layer is made of
per-node / per-edge maps and neighbourhood sums, so ``E(g # v)[P][i] = E(v)[P][g_P[i]]``. The
set embeddings, per-piece input maps and positional embeddings break every other relabelling
of the graph: a permutation of fixed units, an exchange between two perms, or (with block
nodes) a permutation that mixes units across heads changes the embeddings
(``tests/nn/test_graph_equivariance.py`` checks both directions in float64).
"""
import torch
from torch import nn

from deepalign.nn.graph._graph import WeightGraph
from deepalign.nn.graph._layer import GraphLayer
from deepalign.weightspace._permute import batch_size_of


class GraphEncoder(nn.Module):
    r"""Message-passing encoder of a spec's weight graph (module docstring).

    Parameters
    ----------
    graph : WeightGraph
    hidden : int
        Channels of node and edge states.
    n_layers : int
        Message-passing layers (each one :class:`GraphLayer`).
    out_features : int
        Channels of the unit embeddings.
    input_norm : bool
        Divide each piece's raw values by their root mean square over the piece, per network
        (a permutation invariant, so equivariance is untouched). Without it a piece's values
        enter at their own scale: trained weights of ~0.1 next to input maps' biases of ~1 and
        unit embeddings shared by every unit of a set, so that what tells units apart starts
        an order of magnitude below what they share, and training spends its first hundreds
        of steps scaling it up.
    center : bool
        Subtract, per network, each perm set's mean embedding from its units' (an invariant
        again). Deep-Align compares units by cosine similarity; what every unit of a set shares
        (its set embedding, the mean over similar neighbourhoods) would otherwise make all
        cosines near 1, flat logits and flat Sinkhorn plans until the scale ``s`` grows.

    The input maps are one ``nn.Linear`` per node piece (a bias, a BatchNorm statistic, ...)
    and per edge piece (a weight tensor, its taps and blocks as input features), so the
    encoder is tied to the spec it was built for, as the DWS encoder is to its layer chain.
    """

    def __init__(self, graph: WeightGraph, hidden: int = 32, n_layers: int = 3,
                 out_features: int = 64, input_norm: bool = True, center: bool = True):
        super().__init__()
        self.graph = graph
        self.hidden, self.n_layers, self.out_features = hidden, n_layers, out_features
        self.input_norm, self.center = input_norm, center
        sets = list(graph.sets.values())
        self.set_embedding = nn.Parameter(torch.randn(len(sets), hidden) * 0.5)
        node_set = torch.cat([torch.full((s.size,), i) for i, s in enumerate(sets)]) \
            if sets else torch.zeros(0, dtype=torch.long)
        fixed = [torch.arange(s.offset, s.offset + s.size) for s in sets if s.kind == "fixed"]
        fixed = torch.cat(fixed) if fixed else torch.zeros(0, dtype=torch.long)
        self.positional = nn.Parameter(torch.randn(len(fixed), hidden) * 0.5)
        self.node_in = nn.ModuleList(nn.Linear(p.features, hidden) for p in graph.node_pieces)
        self.edge_in = nn.ModuleList(nn.Linear(p.features, hidden) for p in graph.edge_pieces)
        # block edges carry no weight: a learned constant per (block group, member perm); no
        # parameter at all without block groups (DDP refuses parameters that get no gradient)
        self.block_edge = (nn.Parameter(torch.randn(len(graph.block_edges), hidden) * 0.5)
                           if graph.block_edges else None)
        self.layers = nn.ModuleList(GraphLayer(hidden) for _ in range(n_layers))
        self.readout = nn.Linear(hidden, out_features)
        n = graph.num_nodes
        ones = torch.ones(len(graph.src))
        deg_in = torch.zeros(n).index_add_(0, graph.dst, ones).clamp_(min=1)
        deg_out = torch.zeros(n).index_add_(0, graph.src, ones).clamp_(min=1)
        for name, value in (("node_set", node_set), ("fixed_nodes", fixed),
                            ("src", graph.src), ("dst", graph.dst),
                            ("inv_deg_in", deg_in.reciprocal()[:, None]),
                            ("inv_deg_out", deg_out.reciprocal()[:, None]),
                            ("node_index", self._node_index())):
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_spec(cls, spec, state_dict: dict, **kwargs) -> "GraphEncoder":
        """An encoder for networks with ``spec`` shaped like ``state_dict`` (one network)."""
        return cls(WeightGraph(spec, state_dict), **kwargs)

    def _node_index(self) -> torch.Tensor:
        """Node ids of every node piece's units, concatenated in piece order."""
        parts = [torch.arange(s.offset, s.offset + s.size)
                 for s in (self.graph.sets[p.sets[0]] for p in self.graph.node_pieces)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    @property
    def perm_names(self) -> list:
        return list(self.graph.spec.perm_names)

    def node_embeddings(self, state_dict: dict) -> torch.Tensor:
        """Embeddings of every node (perm, fixed and block units) of a batch of networks.

        Parameters
        ----------
        state_dict : dict of str to Tensor
            A batch of networks, a leading dim B on every tensor (a single network: B = 1).

        Returns
        -------
        Tensor, shape (B, N, out_features)
            Rows in ``graph.sets`` order (``UnitSet.offset``).
        """
        batch, _ = batch_size_of(state_dict, self.graph.spec)
        if batch is None:
            state_dict = {k: v[None] for k, v in state_dict.items()}
        dtype = self.set_embedding.dtype
        sd = {k: v.to(self.set_embedding.device, dtype) if v.is_floating_point() else v
              for k, v in state_dict.items()}
        b = next(iter(sd.values())).shape[0] if sd else 0
        h = self._initial_nodes(sd, b)
        e = self._initial_edges(sd, b)
        for i, layer in enumerate(self.layers):
            h, e = layer(h, e, self.src, self.dst, self.inv_deg_in, self.inv_deg_out,
                         update_edges=i < len(self.layers) - 1)
        return self.readout(h)

    def forward(self, state_dict: dict) -> dict:
        """Per-perm unit embeddings: ``{perm: (B, n_perm, out_features)}`` (``perm_names``
        order; ``n_perm`` units in index order, so they move with the perm), centred per set
        with ``center``."""
        h = self.node_embeddings(state_dict)
        out = {name: h[:, s.offset:s.offset + s.size] for name, s in self.graph.sets.items()
               if s.kind == "perm"}
        if self.center:
            out = {name: e - e.mean(dim=1, keepdim=True) for name, e in out.items()}
        return out

    def _initial_nodes(self, sd: dict, b: int) -> torch.Tensor:
        h = self.set_embedding[self.node_set]
        h = h.index_add(0, self.fixed_nodes, self.positional)
        h = h.expand(b, *h.shape)
        values = self.graph.node_values(sd)
        if not values:
            return h.contiguous()
        terms = torch.cat([lin(self._normed(x)) for lin, x in zip(self.node_in, values)], dim=1)
        return h.index_add(1, self.node_index, terms)

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, n, k) over its per-network RMS (all-zero pieces stay zero)."""
        if not self.input_norm:
            return x
        rms = x.square().mean(dim=(1, 2), keepdim=True).sqrt()
        return x / rms.clamp_min(torch.finfo(x.dtype).tiny ** 0.5)

    def _initial_edges(self, sd: dict, b: int) -> torch.Tensor:
        parts = [lin(self._normed(x)) for lin, x in zip(self.edge_in, self.graph.edge_values(sd))]
        counts = self.graph.edge_counts[len(parts):]
        if self.block_edge is not None:
            parts += [row.expand(b, count, -1) for row, count in zip(self.block_edge, counts)]
        if not parts:
            return self.set_embedding.new_zeros(b, 0, self.hidden)
        return torch.cat(parts, dim=1)
