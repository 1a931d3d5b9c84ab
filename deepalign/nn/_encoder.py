"""``WeightSpaceEncoder``: a stack of equivariant layers, and its configuration presets."""
from dataclasses import asdict, dataclass, fields, replace

from torch import nn

from deepalign.nn._equivariant import WeightSpaceLayer
from deepalign.nn._tuple_ops import TupleBatchNorm, TupleDropout, TupleReLU


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of :class:`WeightSpaceEncoder` (and of ``DeepAlign``'s readout).

    Attributes
    ----------
    hidden : int
        Channels of the hidden equivariant layers.
    n_hidden : int
        Number of (norm, act, dropout, layer) blocks after the first layer; the encoder has
        ``n_hidden + 1`` equivariant layers.
    out_features : int
        Channels of the last layer (the neuron embeddings used for matching).
    set_layer : {'ds', 'sab'}
        DeepSets or self-attention over each neuron set.
    heads, last_heads : int
        Attention heads of the hidden layers / of the last layer ('sab' only).
    reduction : {'max', 'mean'}
        Pooling used by every pool.
    downsample : int or None
        Learned slots the first weight's input axis is reduced to (None: full width).
    downsample_every_layer : bool
        True: every layer pools the full-width first weight and spreads its result back (the
        authors' ``DownSampleCannibalLayer``). False: the first layer pools once and all
        later layers work on the slots (much cheaper; the readout never needs full width).
    norm : {'batch', None}
        Normalisation over the (weights, biases) tuple between layers.
    dropout : float
        Dropout between layers (training only).
    weight_similarity : bool
        ``DeepAlign``'s head adds a learned multiple of weight matching's data-agnostic
        similarity to the learned one (``deepalign.nn._weight_similarity``).
    normalize_layers : bool
        ``DeepAlign`` divides each layer's weight and bias by the root mean square of that
        layer's weights, per network, before the encoder: invariant to hidden permutations,
        and blind to the weight scale of a zoo (networks trained on other data or for longer).
    io_linear : bool
        The first layer also maps each first-hidden neuron's incoming weights (over the fixed
        inputs) and each last-hidden neuron's outgoing weights (over the fixed outputs) by a
        full learned linear map (``WeightSpaceLayer``'s ``io_linear``): neurons are compared
        by whole receptive fields, not only through the position embeddings. It fits the
        training data's input layout, so it is for aligners used in distribution.
    """

    hidden: int = 32
    n_hidden: int = 3
    out_features: int = 64
    set_layer: str = "ds"
    heads: int = 4
    last_heads: int = 1
    reduction: str = "mean"
    downsample: object = None
    downsample_every_layer: bool = False
    norm: object = "batch"
    dropout: float = 0.0
    weight_similarity: bool = False
    normalize_layers: bool = False
    io_linear: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# The functional configuration of the authors' MNIST notebook (Navon et al. 2024; 31,873,905
# parameters in their materialised design): hidden 64, 4 hidden layers, out 128, SAB with 8
# heads (1 in the last layer), max pooling, input down-sampling to 8 in every layer, BatchNorm.
PRESETS = {
    "default": EncoderConfig(),
    "paper": EncoderConfig(hidden=64, n_hidden=4, out_features=128, set_layer="sab", heads=8,
                           last_heads=1, reduction="max", downsample=8,
                           downsample_every_layer=True, norm="batch"),
}


def make_config(config="default", **overrides) -> EncoderConfig:
    """An :class:`EncoderConfig` from a preset name, a dict or a config, with overrides."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"config: unknown preset {config!r}; choose from {sorted(PRESETS)}")
        config = PRESETS[config]
    elif isinstance(config, dict):
        config = EncoderConfig(**config)
    elif not isinstance(config, EncoderConfig):
        raise TypeError(f"config must be a preset name, dict or EncoderConfig, got {type(config)}")
    names = {f.name for f in fields(EncoderConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown encoder options {unknown}; valid: {sorted(names)}")
    return replace(config, **overrides)


class WeightSpaceEncoder(nn.Module):
    """Siamese-ready, permutation-equivariant encoder of a chain network's weights.

    Parameters
    ----------
    set_sizes : list[int]
        Neurons per set ``[d_0, ..., d_L]`` (see ``deepalign.nn._layout``).
    in_features : int
        Feature width of the input weights (1 for MLPs, kernel taps for CNNs, padded).
    config : EncoderConfig

    Forward
    -------
    weights : list of Tensor, (B, d_{m+1}, d_m, in_features)
    biases : list of Tensor, (B, d_{m+1}, 1)

    Returns the last layer's bias features of the hidden sets, ``[(B, d_k, out_features)]`` for
    ``k = 1..L-1``: the readout. Nothing else of that layer is computed.
    """

    def __init__(self, set_sizes: list, in_features: int, config: EncoderConfig):
        super().__init__()
        self.config = config
        n_layers = len(set_sizes) - 1
        c = config.hidden
        dims = [(in_features, 1)] + [(c, c)] * config.n_hidden
        outs = [c] * config.n_hidden + [config.out_features]
        self.layers = nn.ModuleList()
        self.between = nn.ModuleList()
        k, every = config.downsample, config.downsample_every_layer
        for i, ((c_w, c_b), c_out) in enumerate(zip(dims, outs)):
            last = i == config.n_hidden
            heads = config.last_heads if last else config.heads
            sizes = [k] + list(set_sizes[1:]) if k and i and not every else set_sizes
            self.layers.append(WeightSpaceLayer(
                sizes, c_w, c_b, c_out, config.set_layer, heads, config.reduction,
                k if (every or i == 0) else None, readout=last, unpool=every,
                io_linear=config.io_linear and i == 0))
            if not last:
                if config.norm not in ("batch", None):
                    raise ValueError(f"norm must be 'batch' or None, got {config.norm!r}")
                block = [TupleBatchNorm(n_layers, c_out, relu=True) if config.norm == "batch"
                         else TupleReLU()]
                if config.dropout:
                    block.append(TupleDropout(config.dropout))
                self.between.append(_TupleSequential(block))

    def forward(self, weights: list, biases: list) -> list:
        pools = None
        for i, layer in enumerate(self.layers):
            after = self.between[i] if i < len(self.between) else None
            if after is not None and not self.training and layer.can_fold:
                # eval: the BatchNorm + ReLU after the layer is an affine map and a ReLU,
                # folded into the layer (dropout is the identity); its entry pass also pools
                # for the next layer, and writes no weights a readout would only pool
                weights, biases, pools = layer(
                    weights, biases, pools, relu_affine=after[0].relu_affine(),
                    keep_weights=not self.layers[i + 1].reads_only_pools)
                continue
            weights, biases, pools = layer(weights, biases, pools)
            if after is not None:
                weights, biases = after(weights, biases)
        return biases


class _TupleSequential(nn.ModuleList):
    """A (BatchNorm + ReLU or ReLU, optional dropout) block between two layers."""

    def forward(self, weights, biases):
        for module in self:
            weights, biases = module(weights, biases)
        return weights, biases
