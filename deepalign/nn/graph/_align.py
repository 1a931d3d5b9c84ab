r"""``GraphDeepAlign``: Deep-Align's head (F_{V->A}, F_prod, F_proj) on the graph encoder.

Deep-Align (Navon et al., ICML 2024) only needs, from its encoder, one embedding per unit of
every hidden neuron set, equivariant to the weight-space group. :class:`GraphEncoder` gives
exactly that for any ``PermutationSpec`` (residual networks, BatchNorm, heads, grouped
convolutions), so the rest of ``DeepAlign`` (normalise and scale, ``S_k = E_a E_b^T``,
Sinkhorn, exact assignment) is inherited unchanged; only the encoder, the perm names, the
batch checks and the saved format differ from the DWS aligner.

Symmetries are those of ``DeepAlign``: ``S(g#v, g'#v') = G S(v, v') G'^T`` and
``S(v', v) = S(v, v')^T`` (``deepalign.testing.assert_aligner_equivariant``).
"""
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from deepalign._io import save_atomic
from deepalign.baselines._block_assignment import assign_perms
from deepalign.nn._deepalign import CHUNK_ELEMENTS, DeepAlign
from deepalign.nn.graph._encoder import GraphEncoder
from deepalign.weightspace import PermutationSpec
from deepalign.weightspace._permute import batch_size_of

FORMAT = "deepalign.GraphDeepAlign/1"


@dataclass(frozen=True)
class GraphEncoderConfig:
    """Hyper-parameters of :class:`GraphEncoder` (``kind`` marks the encoder in saved files)."""

    hidden: int = 32
    n_layers: int = 3
    out_features: int = 64
    input_norm: bool = True
    center: bool = True
    kind: str = "graph"

    def to_dict(self) -> dict:
        return asdict(self)


def make_graph_config(config="graph", **overrides) -> GraphEncoderConfig:
    """A :class:`GraphEncoderConfig` from ``'graph'``, a dict or a config, with overrides."""
    if config == "graph":
        config = GraphEncoderConfig()
    elif isinstance(config, dict):
        config = GraphEncoderConfig(**config)
    elif not isinstance(config, GraphEncoderConfig):
        raise TypeError(f"config must be 'graph', a dict or GraphEncoderConfig, got {config!r}")
    names = {f.name for f in fields(GraphEncoderConfig)} - {"kind"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown graph encoder options {unknown}; valid: {sorted(names)}")
    return replace(config, **overrides)


class GraphDeepAlign(DeepAlign):
    """Learned aligner over the graph encoder; same API as :class:`DeepAlign`.

    Parameters
    ----------
    spec : PermutationSpec
    state_dict : dict of str to Tensor
        One network or a batch (only the shapes are read).
    config : 'graph', dict or GraphEncoderConfig
    **overrides
        Fields of :class:`GraphEncoderConfig`.
    """

    def __init__(self, spec, state_dict: dict, config="graph", **overrides):
        nn.Module.__init__(self)
        self.spec = spec
        self.config = make_graph_config(config, **overrides)
        batch, _ = batch_size_of(state_dict, spec)
        self.shapes = {k: (tuple(v.shape[batch is not None:]), v.is_floating_point())
                       for k, v in state_dict.items()}
        one = {k: torch.zeros(shape, dtype=torch.float32 if floating else torch.long)
               for k, (shape, floating) in self.shapes.items()}
        kwargs = {k: v for k, v in self.config.to_dict().items() if k != "kind"}
        self.encoder = GraphEncoder.from_spec(spec, one, **kwargs)
        self.scale = nn.Parameter(torch.tensor(3.0))  # as DeepAlign: start sharper than s = 1
        self.layout = None  # no layer chain: the graph covers any spec
        self.weight_similarity = None  # the weight term needs a layer chain
        self.task = {}

    @classmethod
    def from_spec(cls, spec, state_dict: dict, config="graph", **overrides) -> "GraphDeepAlign":
        return cls(spec, state_dict, config, **overrides)

    @property
    def perm_names(self) -> list:
        """Permutation names of the spec, in execution order."""
        return list(self.spec.perm_names)

    @property
    def weight_keys(self) -> list:
        """The floating-point ``state_dict`` entries (what alignment losses compare)."""
        return [k for k, (_, floating) in self.shapes.items() if floating]

    def round(self, logits: dict) -> dict:
        """Hard perms maximising the similarity ``logits`` over the spec's symmetry group.

        Plain perms get a linear assignment each; every block group (attention heads,
        convolution groups) is rounded as a whole, the best block permutation with the best
        permutations inside the blocks (weight matching's hierarchical assignment), since
        per-member assignments of head units would not be a symmetry of the network.
        """
        single = next(iter(logits.values())).dim() == 2
        batch = {k: v.unsqueeze(0) for k, v in logits.items()} if single else logits
        perms = assign_perms(batch, self.spec)
        return {k: v[0] for k, v in perms.items()} if single else perms

    def check_compatible(self, spec, state_dict: dict) -> None:
        """Raise ``ValueError`` unless networks of ``spec`` shaped like ``state_dict`` are the
        architecture this aligner was built for."""
        other = GraphDeepAlign(spec, state_dict, self.config)
        if spec != self.spec or other.shapes != self.shapes:
            raise ValueError("this aligner was built for another architecture: spec or "
                             "shapes differ")

    def _prepare(self, sd_a: dict, sd_b: dict) -> tuple:
        batch_a, _ = batch_size_of(sd_a, self.spec, "sd_a")
        batch_b, _ = batch_size_of(sd_b, self.spec, "sd_b")
        if batch_a != batch_b:
            raise ValueError(f"sd_a and sd_b must both be single networks or batches of the "
                             f"same size, got {batch_a or 'single'} and {batch_b or 'single'}")
        if batch_a is None:
            sd_a, sd_b = ({k: v[None] for k, v in sd.items()} for sd in (sd_a, sd_b))
        return sd_a, sd_b, batch_a is not None

    def embed(self, *batches: dict, dtype: torch.dtype = None) -> list:
        """Unit embeddings of several batches of networks, encoded in one encoder call.

        Returns, per batch, a list (one per perm, ``perm_names`` order) of
        ``(B_i, n_k, out_features)``: L2-normalised over channels, times the scale ``s``.
        ``dtype`` other than the parameters' is not supported by this encoder.
        """
        ref = self.scale
        if dtype is not None and dtype != ref.dtype:
            raise NotImplementedError(f"the graph encoder runs in its parameters' dtype "
                                      f"({ref.dtype}), not {dtype}")
        joined = {k: torch.cat([sd[k] for sd in batches]).to(ref.device) for k in batches[0]}
        n = next(iter(joined.values())).shape[0]
        # eval: networks are encoded independently, so many pairs run in chunks whose edge
        # states hold about CHUNK_ELEMENTS values (an MNIST MLP has 134,400 edges)
        graph = self.encoder.graph
        per_network = max(1, (len(graph.src) + graph.num_nodes) * self.encoder.hidden)
        step = n if self.training else max(1, CHUNK_ELEMENTS // per_network)
        chunks = [self.encoder({k: v[i:i + step] for k, v in joined.items()})
                  for i in range(0, n, step)]
        emb = [nn.functional.normalize(torch.cat([c[name] for c in chunks]), dim=-1)
               * self.scale for name in self.perm_names]
        sizes = [next(iter(sd.values())).shape[0] for sd in batches]
        return [list(chunk) for chunk in zip(*(e.split(sizes) for e in emb))]

    def save(self, path) -> None:
        """Write spec, shapes, config and weights to one file, atomically."""
        save_atomic({"format": FORMAT, "spec": self.spec.to_dict(),
                     "shapes": {k: [list(s), f] for k, (s, f) in self.shapes.items()},
                     "config": self.config.to_dict(), "state_dict": self.state_dict(),
                     "task": self.task}, path)

    @classmethod
    def from_payload(cls, payload: dict) -> "GraphDeepAlign":
        """Rebuild from what :meth:`save` wrote (``DeepAlign.load`` calls this)."""
        one = {k: torch.zeros(s, dtype=torch.float32 if f else torch.long)
               for k, (s, f) in payload["shapes"].items()}
        # files written before ``input_norm`` and ``center`` existed were trained without them
        config = {"input_norm": False, "center": False, **payload["config"]}
        model = cls(PermutationSpec.from_dict(payload["spec"]), one, config)
        model.load_state_dict(payload["state_dict"])
        model.task = payload.get("task", {})
        return model.eval()
