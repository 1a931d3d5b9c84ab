"""The chain of (weight, bias) layers that the equivariant encoder sees, read off a PermutationSpec.

Internal representation (fixed for all of ``deepalign.nn``): layer ``m`` of a chain of ``L``
layers is a weight tensor of shape ``(B, d_out, d_in, f)`` (PyTorch's (out, in) order, not the
paper's transposed (in, out)) and a bias of shape ``(B, d_out, 1)``. ``f`` holds what is not a
neuron axis: 1 for a linear layer, the kernel taps ``kh * kw`` for a convolution, the spatial
positions ``s`` for a linear layer that follows a convolution (its ``C * s`` input axis is folded
to ``(C, s)``, as in Navon et al. 2024, §2.0 of our digest). Every ``f`` is zero-padded to the
largest one so that all layers share one feature width.

Neuron sets: set ``k`` (``k = 0..L``) holds the ``d_k`` neurons between layer ``k`` and
``k + 1``. Sets ``1..L-1`` are hidden and permuted; set 0 (inputs) and set ``L`` (outputs) are
fixed.
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerSlot:
    """One weight of the chain, with its bias and permutations."""

    weight: str
    bias: object  # str or None
    out_perm: object  # str or None (None only for the last layer)
    in_perm: object  # str or None (None only for the first layer)
    d_out: int
    d_in: int
    taps: int


class WeightLayout:
    """A chain of layers in execution order, built from ``PermutationSpec.axes_to_perm``.

    Parameters
    ----------
    axes_to_perm : dict[str, tuple[str | None, ...]]
        As in ``PermutationSpec.axes_to_perm`` (insertion order = execution order).
    shapes : dict[str, tuple[int, ...]]
        The shape of every entry of one (unbatched) state_dict.
    """

    def __init__(self, axes_to_perm: dict, shapes: dict):
        # scalar entries (e.g. ``num_batches_tracked``) carry no neurons
        self.axes_to_perm = {k: tuple(v) for k, v in axes_to_perm.items() if len(v)}
        self.shapes = {k: tuple(int(s) for s in shapes[k]) for k in self.axes_to_perm
                       if k in shapes}
        missing = [k for k in self.axes_to_perm if k not in shapes]
        if missing:
            raise ValueError(f"shapes: no shape for spec entries {missing}")
        self.slots = self._chain()
        self.taps = max(s.taps for s in self.slots)
        self.set_sizes = [self.slots[0].d_in] + [s.d_out for s in self.slots]
        self.perm_names = [s.out_perm for s in self.slots[:-1]]

    @classmethod
    def from_spec(cls, spec, state_dict: dict) -> "WeightLayout":
        """Layout of ``spec`` for networks shaped like ``state_dict`` (batched or not)."""
        # a block group would be silently ignored by the DWS layers' free per-layer perms
        spec.require_plain("the DWS encoder (encoder='graph' reads structured specs)")
        shapes = {}
        for key, axes in spec.axes_to_perm.items():
            if key not in state_dict:
                raise ValueError(f"state_dict: missing entry {key!r} of the spec")
            shape = tuple(state_dict[key].shape)
            shapes[key] = shape[len(shape) - len(axes):]
        return cls(spec.axes_to_perm, shapes)

    def to_dict(self) -> dict:
        """Plain-type description (for checkpoints); inverse of :meth:`from_dict`."""
        return {"axes_to_perm": {k: list(v) for k, v in self.axes_to_perm.items()},
                "shapes": {k: list(v) for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "WeightLayout":
        return cls(data["axes_to_perm"], data["shapes"])

    def _chain(self) -> list:
        weights = [k for k, ax in self.axes_to_perm.items() if len(ax) >= 2]
        biases = {k: ax for k, ax in self.axes_to_perm.items() if len(ax) == 1}
        if not weights:
            raise ValueError("spec: no weight (>= 2-d entry) to align")
        sizes = {}
        for key in weights + list(biases):  # output axes are never blocked (flattened)
            perm = self.axes_to_perm[key][0]
            if perm is not None:
                sizes.setdefault(perm, self.shapes[key][0])
        slots, used = [], set()
        for m, key in enumerate(weights):
            axes, shape = self.axes_to_perm[key], self.shapes[key]
            if any(a is not None for a in axes[2:]):
                raise ValueError(f"spec: {key!r} permutes a kernel axis: {axes}")
            out_perm, in_perm = axes[0], axes[1]
            expected_in = slots[-1].out_perm if slots else None
            if in_perm != expected_in:
                raise ValueError(f"spec: {key!r} takes perm {in_perm!r} on its input axis, but "
                                 f"the previous layer outputs {expected_in!r}; deepalign.nn "
                                 "supports chains (MLP, plain CNN, INR) only")
            if out_perm is not None and any(s.out_perm == out_perm for s in slots):
                raise ValueError(f"spec: {key!r} outputs perm {out_perm!r} again (a residual "
                                 "stream); deepalign.nn supports chains (MLP, plain CNN, INR) "
                                 "only")
            if (out_perm is None) != (m == len(weights) - 1):
                raise ValueError(f"spec: {key!r}: only the last layer may leave its output "
                                 "axis unpermuted")
            d_in, fold = shape[1], 1
            if in_perm is not None:
                d_in = sizes[in_perm]
                if shape[1] % d_in:
                    raise ValueError(f"spec: {key!r} input axis {shape[1]} is not a multiple "
                                     f"of perm {in_perm!r} size {d_in}")
                fold = shape[1] // d_in
            bias = self._bias_of(key, out_perm, biases, used)
            slots.append(LayerSlot(key, bias, out_perm, in_perm, shape[0], d_in,
                                   fold * math.prod(shape[2:])))
        extra = [k for k in biases if k not in used]
        if extra:
            raise ValueError(f"spec: entries {extra} are not part of the layer chain "
                             "(normalisation layers are not supported)")
        return slots

    def _bias_of(self, weight: str, out_perm, biases: dict, used: set):
        prefix = weight.rsplit(".", 1)[0]
        for key, axes in biases.items():
            if key not in used and key.rsplit(".", 1)[0] == prefix:
                if axes[0] != out_perm:
                    raise ValueError(f"spec: bias {key!r} perm {axes[0]!r} differs from "
                                     f"{weight!r} output perm {out_perm!r}")
                used.add(key)
                return key
        return None

    def batch_size(self, sd: dict) -> tuple:
        """``(B, batched)`` of a state_dict: ``batched`` is False for a single network."""
        key = self.slots[0].weight
        if key not in sd:
            raise ValueError(f"state_dict: missing entry {key!r}")
        extra = sd[key].dim() - len(self.shapes[key])
        if extra not in (0, 1) or tuple(sd[key].shape[extra:]) != self.shapes[key]:
            raise ValueError(f"state_dict[{key!r}]: expected shape {self.shapes[key]} with an "
                             f"optional batch dim, got {tuple(sd[key].shape)}")
        return (sd[key].shape[0] if extra else 1), bool(extra)

    def to_internal(self, sd: dict) -> tuple:
        """Weights ``[(B, d_out, d_in, taps)]`` and biases ``[(B, d_out, 1)]`` of a batch.

        ``sd`` must be batched (every entry has a leading B); missing biases read as zeros.
        """
        weights, biases = [], []
        for slot in self.slots:
            w = sd[slot.weight]
            if tuple(w.shape[1:]) != self.shapes[slot.weight]:
                raise ValueError(f"state_dict[{slot.weight!r}]: expected (B, "
                                 f"{', '.join(map(str, self.shapes[slot.weight]))}), "
                                 f"got {tuple(w.shape)}")
            w = w.reshape(w.shape[0], slot.d_out, slot.d_in, slot.taps)
            weights.append(torch.nn.functional.pad(w, (0, self.taps - slot.taps)))
            if slot.bias is None:
                biases.append(w.new_zeros(w.shape[0], slot.d_out, 1))
            else:
                biases.append(sd[slot.bias].reshape(w.shape[0], slot.d_out, 1))
        return weights, biases
