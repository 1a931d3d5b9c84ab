r"""``DeepAlign``: the learned weight-space aligner F(v, v') (Navon et al., ICML 2024).

F = F_proj o F_prod o F_{V->A} o F_DWS:

* F_DWS: the Siamese :class:`WeightSpaceEncoder`, applied to both networks in one call;
* F_{V->A}: the last layer's bias features of each hidden neuron set, L2-normalised over the
  channels and multiplied by one learned scalar ``s``;
* F_prod: ``S_k[i, j] = <e_i(v), e_j(v')> = s^2 cos(.)`` for A's neuron ``i`` and B's ``j``;
* F_proj: Sinkhorn (``deepalign.ops.outer_sinkhorn_project``) for soft plans while training,
  exact linear assignment (``deepalign.ops.linear_assignment``) of ``S`` for hard perms. The
  assignment of ``log P`` equals that of ``S`` (Sinkhorn only adds row and column constants),
  so rounding uses the raw similarity.

With ``weight_similarity=True`` (an ``EncoderConfig`` field) ``S_k`` also gets a learned
positive multiple of weight matching's cosine similarity of the raw weights, computed along
the chain with the aligner's own plans (``_weight_similarity``): a data-agnostic term the
learned part corrects.

Symmetries: for hidden-neuron permutations ``g, g'``,
``S(g#v, g'#v') = G S(v, v') G'^T`` and ``S(v', v) = S(v, v')^T``.
"""
import torch
from torch import nn

from deepalign import ops
from deepalign.nn._encoder import WeightSpaceEncoder, make_config
from deepalign.nn._layout import WeightLayout
from deepalign.nn._weight_similarity import WeightSimilarity
from deepalign._io import save_atomic

_FORMAT = "deepalign.DeepAlign/1"
#: Eval-mode encoding runs in chunks of networks whose activations hold about this many
#: elements (128 MiB in float32), so that any number of pairs fits in memory. Larger chunks
#: spread the per-call cost of the many small neuron-set ops over more networks and keep both
#: threads busy (paper CIFAR-10 CNN architecture, 21 pairs: 5.7 ms/pair at 2^25 elements, 7.0
#: at 2^24, 11 at 2^22; the entry passes stream through memory at all three).
CHUNK_ELEMENTS = 2 ** 25


class DeepAlign(nn.Module):
    """Learned aligner: maps a pair of networks to per-layer (soft) permutations.

    Parameters
    ----------
    layout : WeightLayout
        The layer chain (see :meth:`from_spec` / :meth:`from_zoo` to build one).
    config : str, dict or EncoderConfig
        'default' (small, fast on CPU) or 'paper' (the authors' functional configuration).
    **overrides
        Fields of :class:`~deepalign.nn.EncoderConfig` to change.

    Notes
    -----
    Perms follow ``docs/CONTRACTS.md``: ``align(sd_a, sd_b)`` returns ``p`` with ``p[i] = j``
    (B's neuron ``j`` goes to A's position ``i``), so ``deepalign.permute(sd_b, spec, p)``
    is comparable with ``sd_a``; soft plans ``P[i, j]`` apply as ``P @ old``.
    """

    def __init__(self, layout: WeightLayout, config="default", **overrides):
        super().__init__()
        self.layout = layout
        self.config = make_config(config, **overrides)
        self.encoder = WeightSpaceEncoder(layout.set_sizes, layout.taps, self.config)
        # s^2 cos with s = 1 (the paper's init) keeps logits in [-1, 1]: nearly uniform rows
        # over tens of neurons and slow early training. Start sharper.
        # With the weight term, start at weight matching's forward sweep (the term sharp, the
        # untrained learned part small) and let training add what the learned part is worth.
        with_weights = self.config.weight_similarity
        self.scale = nn.Parameter(torch.tensor(1.0 if with_weights else 3.0))
        self.weight_similarity = (WeightSimilarity(len(layout.perm_names))
                                  if with_weights else None)
        # What the aligned networks are ({"model": build_model config, "dataset": name}), so a
        # saved aligner can rebuild and check them; set by from_zoo and the trainer.
        self.task = {}

    @classmethod
    def from_spec(cls, spec, state_dict: dict, config="default", encoder: str = "dws",
                  **overrides) -> "DeepAlign":
        """An aligner for networks with ``spec`` shaped like ``state_dict`` (one or a batch).

        ``encoder='graph'`` (or ``config='graph'``) builds a
        :class:`~deepalign.nn.graph.GraphDeepAlign`: the same head on the graph encoder,
        which reads any spec (residual networks, BatchNorm, heads); ``config`` and
        ``overrides`` then configure it (``GraphEncoderConfig``).
        """
        if encoder == "graph" or _is_graph_config(config):
            from deepalign.nn.graph._align import GraphDeepAlign

            return GraphDeepAlign(spec, state_dict,
                                  "graph" if config == "default" else config, **overrides)
        if encoder != "dws":
            raise ValueError(f"encoder must be 'dws' or 'graph', got {encoder!r}")
        return cls(WeightLayout.from_spec(spec, state_dict), config, **overrides)

    @classmethod
    def from_zoo(cls, zoo, config="default", encoder: str = "dws",
                 **overrides) -> "DeepAlign":
        """An aligner for the architecture of a ``deepalign.zoo.Zoo`` (classifiers or INRs);
        ``encoder`` as in :meth:`from_spec`."""
        aligner = cls.from_spec(zoo.spec(), zoo.build_model().state_dict(), config, encoder,
                                **overrides)
        aligner.task = {"model": zoo.config, "dataset": zoo.dataset}
        return aligner

    def check_compatible(self, spec, state_dict: dict) -> None:
        """Raise ``ValueError`` unless networks of ``spec`` shaped like ``state_dict`` have
        exactly the layer chain this aligner was built for."""
        other = WeightLayout.from_spec(spec, state_dict)
        if other.slots != self.layout.slots:
            mine = [(s.weight, s.d_out, s.d_in, s.taps) for s in self.layout.slots]
            theirs = [(s.weight, s.d_out, s.d_in, s.taps) for s in other.slots]
            raise ValueError(f"this aligner was built for layers {mine}, the networks have "
                             f"{theirs}")

    @property
    def perm_names(self) -> list:
        """Permutation names, one per hidden neuron set, in execution order."""
        return list(self.layout.perm_names)

    @property
    def weight_keys(self) -> list:
        """The ``state_dict`` entries the encoder reads (what alignment losses compare)."""
        return [k for s in self.layout.slots for k in (s.weight, s.bias) if k]

    def _prepare(self, sd_a: dict, sd_b: dict) -> tuple:
        (n_a, batched_a), (n_b, batched_b) = (self.layout.batch_size(sd_a),
                                              self.layout.batch_size(sd_b))
        if batched_a != batched_b or n_a != n_b:
            raise ValueError(f"sd_a and sd_b must both be single networks or batches of the "
                             f"same size, got {n_a if batched_a else 'single'} and "
                             f"{n_b if batched_b else 'single'}")
        if not batched_a:
            sd_a, sd_b = ({k: v[None] for k, v in sd.items()} for sd in (sd_a, sd_b))
        return sd_a, sd_b, batched_a

    def embed(self, *batches: dict, dtype: torch.dtype = None) -> list:
        """Neuron embeddings of several batches of networks, encoded in one encoder call.

        Parameters
        ----------
        *batches : dict of str to Tensor, each (B_i, *shape)
        dtype : torch.dtype, optional
            Precision of the encoder's activations (default: the parameters'). With
            ``torch.bfloat16`` the encoder runs in mixed precision: parameters are cast on use
            (their gradients reach the float32 originals), BatchNorm keeps float32 statistics,
            and the embeddings come back in the parameters' dtype.

        Returns
        -------
        list (one per batch) of lists (one per hidden set) of Tensor, (B_i, d_k, out_features)
            L2-normalised over channels, times the learned scale ``s``. With the weight
            similarity each list also carries its networks' layers (``.layers``, the
            layout's internal form in the parameters' dtype, not normalised) for
            :meth:`logits`.
        """
        ref = self.scale
        parts = raw = [self.layout.to_internal({k: v.to(ref.device, dtype or ref.dtype)
                                                for k, v in sd.items()}) for sd in batches]
        if self.config.normalize_layers:
            parts = [_normalize_layers(*p) for p in parts]
        feats = self._encode([torch.cat(w) for w in zip(*(p[0] for p in parts))],
                             [torch.cat(b) for b in zip(*(p[1] for p in parts))])
        emb = [torch.nn.functional.normalize(f.to(ref.dtype), dim=-1) * self.scale
               for f in feats]
        sizes = [p[0][0].shape[0] for p in parts]
        out = [_Embeddings(chunk) for chunk in zip(*(e.split(sizes) for e in emb))]
        if self.weight_similarity is not None:
            if dtype not in (None, ref.dtype):  # the term stays in the parameters' precision
                raw = [self.layout.to_internal({k: v.to(ref.device, ref.dtype)
                                                for k, v in sd.items()}) for sd in batches]
            for chunk, layers in zip(out, raw):
                chunk.layers = layers
        return out

    def _encode(self, weights: list, biases: list) -> list:
        """The encoder. In eval mode networks are encoded independently (BatchNorm uses its
        running statistics), so large batches run in chunks of :data:`CHUNK_ELEMENTS`."""
        n = weights[0].shape[0]
        step = n if self.training else CHUNK_ELEMENTS // self._elements_per_network(weights)
        if step >= n:
            return self.encoder(weights, biases)
        step = max(1, step)
        chunks = [self.encoder([w[i:i + step] for w in weights], [b[i:i + step] for b in biases])
                  for i in range(0, n, step)]
        return [torch.cat(parts) for parts in zip(*chunks)]

    def _elements_per_network(self, weights: list) -> int:
        """About the size of one network's largest activation: its weight features with
        ``hidden`` channels each (kernel taps are only input features), at ``downsample``
        slots after a one-off pooling, or that pooling's attention weights."""
        config = self.config
        entries = [w.shape[1] * w.shape[2] for w in weights]
        if not config.downsample or config.downsample_every_layer:
            return config.hidden * sum(entries)
        attention = entries[0] * config.downsample
        entries[0] = weights[0].shape[1] * config.downsample
        return max(config.hidden * sum(entries), attention)

    def embed_pair(self, sd_a: dict, sd_b: dict) -> tuple:
        """``(emb_a, emb_b, batched)``: :meth:`embed` of a pair (single networks or batches)."""
        sd_a, sd_b, batched = self._prepare(sd_a, sd_b)
        emb_a, emb_b = self.embed(sd_a, sd_b)
        return emb_a, emb_b, batched

    def logits(self, emb_a: list, emb_b: list, n_iters: int = 20, tau: float = 1.0) -> dict:
        """``S_k = E_a E_b^T`` (plus the weight term, whose inner plans use ``n_iters`` and
        ``tau`` while training) from :meth:`embed_pair` output: dict of (B, n_k, n_k)."""
        learned = [ea @ eb.mT for ea, eb in zip(emb_a, emb_b)]
        if self.weight_similarity is not None:
            learned = self.weight_similarity(learned, emb_a.layers, emb_b.layers, n_iters, tau)
        return dict(zip(self.perm_names, learned))

    def plans(self, emb_a: list, emb_b: list, n_iters: int = 20, tau: float = 1.0) -> dict:
        """Sinkhorn plans ``sinkhorn(S, n_iters, tau)`` of :meth:`logits` (without the weight
        term: fused with the outer product ``E_a E_b^T``)."""
        if self.weight_similarity is not None:
            return {name: ops.sinkhorn_project(s, n_iters, tau)
                    for name, s in self.logits(emb_a, emb_b, n_iters, tau).items()}
        return {name: ops.outer_sinkhorn_project(ea, eb, n_iters, tau)
                for name, ea, eb in zip(self.perm_names, emb_a, emb_b)}

    def forward(self, sd_a: dict, sd_b: dict) -> dict:
        """Similarity logits ``S_k[b, i, j] = s^2 cos(e_i(a), e_j(b))``: dict of (B, n_k, n_k)."""
        emb_a, emb_b, batched = self.embed_pair(sd_a, sd_b)
        return self._unbatch(self.logits(emb_a, emb_b), batched)

    def soft_align(self, sd_a: dict, sd_b: dict, n_iters: int = 20, tau: float = 1.0) -> dict:
        """Doubly-stochastic plans aligning B to A: dict of (B, n, n) (or (n, n)).

        ``sinkhorn(S, n_iters, tau)`` of the similarity logits, fused with the outer product.
        """
        emb_a, emb_b, batched = self.embed_pair(sd_a, sd_b)
        return self._unbatch(self.plans(emb_a, emb_b, n_iters, tau), batched)

    @torch.no_grad()
    def align(self, sd_a: dict, sd_b: dict) -> dict:
        """Hard perms aligning B to A (int64 (B, n) or (n,)), the baselines' format.

        Uses the module's current mode: call ``.eval()`` first for inference. For many pairs
        on the CPU, ``deepalign.training.keep_freed_memory()`` (once per process) saves
        re-faulting large intermediates (Fashion-MNIST MLPs, measured before the fused entry
        pass: about 3 against 11 ms per pair).
        """
        return self.round(self.forward(sd_a, sd_b))

    def round(self, logits: dict) -> dict:
        """Hard perms maximising the similarity ``logits``: a linear assignment per perm."""
        return {name: ops.linear_assignment(s, maximize=True) for name, s in logits.items()}

    @staticmethod
    def _unbatch(out: dict, batched: bool) -> dict:
        return out if batched else {k: v[0] for k, v in out.items()}

    def save(self, path) -> None:
        """Write config, layout and weights to one file, atomically."""
        save_atomic({"format": _FORMAT, "layout": self.layout.to_dict(),
                     "config": self.config.to_dict(), "state_dict": self.state_dict(),
                     "task": self.task}, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "DeepAlign":
        """Rebuild a saved aligner (in eval mode)."""
        payload = torch.load(path, map_location=map_location, weights_only=True)
        from deepalign.nn.graph._align import FORMAT as GRAPH_FORMAT, GraphDeepAlign

        if isinstance(payload, dict) and payload.get("format") == GRAPH_FORMAT:
            return GraphDeepAlign.from_payload(payload)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a DeepAlign file (format {_FORMAT} or "
                             f"{GRAPH_FORMAT})")
        model = cls(WeightLayout.from_dict(payload["layout"]), payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.task = payload.get("task", {})
        return model.eval()


def _normalize_layers(weights: list, biases: list) -> tuple:
    """Each layer's weight and bias over the RMS of its weights, per network."""
    rms = [w.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
           for w in weights]
    return ([w / r for w, r in zip(weights, rms)],
            [b / r[..., 0] for b, r in zip(biases, rms)])


class _Embeddings(list):
    """Per hidden set neuron embeddings of a batch; ``layers`` holds the networks' layers
    when the weight similarity needs them."""

    layers = None


def _is_graph_config(config) -> bool:
    """Whether ``config`` names or configures the graph encoder."""
    return config == "graph" or getattr(config, "kind", None) == "graph" or (
        isinstance(config, dict) and config.get("kind") == "graph")
