"""Similarity matrices kept current by row updates equal the ones rebuilt from scratch."""
import pytest
import torch

from alignment_nets import digits, stacked, trained
from deepalign.baselines import matching_cost
from deepalign.baselines import _similarity
from deepalign.baselines._similarity import SimilarityMatrices
from deepalign.weightspace import PermutationSpec, random_permutations


def tensor_spec():
    """A hand-written spec with a three-perm tensor and a perm on both axes of one tensor."""
    spec = PermutationSpec({"w_in": ("P", None), "w_mid": ("P", "Q", "R"), "w_sq": ("Q", "Q"),
                            "w_out": (None, "R"), "b": ("R",)})
    shapes = {"w_in": (6, 3), "w_mid": (6, 5, 4), "w_sq": (5, 5), "w_out": (2, 4), "b": (4,)}
    return spec, shapes


def weights(kind, width, seed):
    if kind == "tensors":
        spec, shapes = tensor_spec()
        gen = torch.Generator().manual_seed(seed)
        return spec, {k: torch.randn(width, *s, generator=gen, dtype=torch.float64)
                      for k, s in shapes.items()}
    spec = PermutationSpec.from_module(trained(kind, 0), digits()[0][:2])
    sd = stacked(kind, [seed + i for i in range(width)])
    return spec, {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


def moved_rows(perm, count, gen):
    """``perm`` with ``count`` of its entries cycled among themselves."""
    rows = torch.randperm(perm.shape[0], generator=gen)[:count]
    out = perm.clone()
    out[rows] = perm[rows.roll(1)]
    return out


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "tensors"])
def test_updates_match_matrices_rebuilt_from_scratch(kind, in_place, monkeypatch):
    if in_place:  # large matrices are read without a transposed copy (_ColumnTerm)
        monkeypatch.setattr(_similarity, "_COLUMN_TERM_SIZE", 0)
    spec, a = weights(kind, 3, 0)
    b = weights(kind, 3, 3)[1]
    sizes = spec.check(a, batched=True)
    gen = torch.Generator().manual_seed(1)
    perms = random_permutations(sizes, 3, gen)
    similarity = SimilarityMatrices(a, b, spec, sizes, perms)
    kinds = {type(t) for terms in similarity.terms.values() for t in terms}
    assert (_similarity._ColumnTerm in kinds) == (in_place and kind in ("mlp", "tensors"))
    names = spec.perm_names
    similarity.get(names[0], torch.tensor([0, 2]))  # some matrices exist before the updates
    for step in range(6):
        name = names[step % len(names)]
        idx = torch.tensor([0, 1, 2] if step % 2 else [2, 0])
        old = perms[name][idx]
        n = sizes[name]
        # a few rows, all rows, and no row moved
        new = torch.stack([moved_rows(p, c, gen) for p, c in zip(old, [2, n, 0])][:len(idx)])
        perms[name][idx] = new
        moved = similarity.update(name, idx, old)
        assert sorted(moved.tolist()) == sorted(idx[(new != old).any(1)].tolist())
        for q in names:
            expected = matching_cost(a, b, spec, perms, q, sizes[q])
            torch.testing.assert_close(similarity.get(q, torch.arange(3)), expected,
                                       rtol=1e-12, atol=1e-12)


def test_float32_weights_accumulate_in_float64():
    spec, a = weights("mlp", 2, 0)
    b = weights("mlp", 2, 2)[1]
    a32 = {k: v.float() if v.is_floating_point() else v for k, v in a.items()}
    b32 = {k: v.float() if v.is_floating_point() else v for k, v in b.items()}
    sizes = spec.check(a, batched=True)
    perms = random_permutations(sizes, 2, torch.Generator().manual_seed(0))
    similarity = SimilarityMatrices(a32, b32, spec, sizes, perms)
    for q in spec.perm_names:
        got = similarity.get(q, torch.arange(2))
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, matching_cost(a, b, spec, perms, q, sizes[q]),
                                   rtol=1e-5, atol=1e-4)
