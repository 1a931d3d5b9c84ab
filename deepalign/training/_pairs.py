"""Training pairs drawn from a zoo held in memory.

* labelled: ``(v, t # aug(v))`` for a random hidden permutation ``t``; the target is the perm
  that aligns B to A, ``t^{-1}`` (``permute(t # v, t^{-1}) = v``, CONTRACTS.md);
* unlabelled: two different networks of the zoo (of one group, when the zoo has groups: the
  views of one image in an INR zoo), or, when distilling, a pair solved beforehand
  (``DistillationTargets``) with its perms.

Everything is drawn from the generator handed to :meth:`PairSampler.sample`, so a run is
reproducible from ``(seed, step, rank)`` alone and resuming needs no sampler state.
"""
from dataclasses import dataclass

import torch

from deepalign.training._augment import Augmentation, augment
from deepalign.weightspace import invert_permutations, permute


@dataclass
class PairBatch:
    """One batch of training items: a network with a labelled and an unlabelled partner.

    Attributes
    ----------
    a : dict of str to Tensor, (B, *shape)
        Zoo networks, the A side of both pairs.
    labelled_b : dict of str to Tensor, (B, *shape)
        ``t # aug(a)``.
    target : dict of str to LongTensor, (B, n)
        Perms aligning ``labelled_b`` to ``a``.
    unlabelled_b : dict of str to Tensor, (B, *shape)
        Another zoo network per item.
    index : LongTensor, (B,)
        Which of the sampler's networks ``a`` holds (to look up per-network targets).
    distill_target : dict of str to LongTensor, (B, n), optional
        Perms aligning ``unlabelled_b`` to ``a`` found by an optimiser (distillation).
    """

    a: dict
    labelled_b: dict
    target: dict
    unlabelled_b: dict
    index: torch.Tensor
    distill_target: dict | None = None


class PartnerRule:
    """Draws, for networks ``i``, a different network to pair each with.

    Parameters
    ----------
    count : int
        Networks 0 .. count-1 (count >= 2).
    groups : LongTensor (count,), optional
        Partners come from the same group (all groups of one size >= 2); None: any network.
    """

    def __init__(self, count: int, groups: torch.Tensor | None = None):
        if count < 2:
            raise ValueError(f"nets: need at least 2 networks for pairs, got {count}")
        self.count, self.table = count, None
        if groups is not None:
            if groups.shape != (count,):
                raise ValueError(f"groups must have shape ({count},), got {tuple(groups.shape)}")
            members = [torch.nonzero(groups == g).flatten() for g in groups.unique()]
            sizes = {len(m) for m in members}
            if len(sizes) != 1 or min(sizes) < 2:
                raise ValueError(f"every group needs the same number (>= 2) of networks, got "
                                 f"group sizes {sorted(sizes)}")
            self.table = torch.empty(count, min(sizes) - 1, dtype=torch.long)
            for m in members:
                for k, i in enumerate(m):
                    self.table[i] = torch.cat([m[:k], m[k + 1:]])

    def draw(self, first: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One partner per entry of ``first`` (LongTensor), never the network itself."""
        if self.table is None:
            shift = torch.randint(1, self.count, first.shape, generator=generator)
            return (first + shift) % self.count
        return self.table[first, torch.randint(self.table.shape[1], first.shape,
                                               generator=generator)]


class PairSampler:
    """Samples :class:`PairBatch` es from a stacked set of networks.

    Parameters
    ----------
    nets : dict of str to Tensor, each (N, *shape)
        The training networks (e.g. ``zoo.stacked(zoo.split["train"])``), N >= 2.
    spec : PermutationSpec
    layout : deepalign.nn.WeightLayout or list of str
        The layer chain, or the entries to augment (``deepalign.training.augment``).
    augmentation : Augmentation
    groups : LongTensor (N,), optional
        Unlabelled pairs only within a group (:class:`PartnerRule`).
    targets : DistillationTargets, optional
        Solved pairs of these networks: unlabelled pairs are drawn from them, with their perms.
    """

    def __init__(self, nets: dict, spec, layout, augmentation: Augmentation = Augmentation(),
                 groups: torch.Tensor | None = None, targets=None):
        self.nets, self.spec, self.layout, self.aug = nets, spec, layout, augmentation
        self.targets = targets
        self.count = next(iter(nets.values())).shape[0]
        self.partner = PartnerRule(self.count, groups)
        self.sizes = spec.perm_sizes(nets, batched=True)

    def _take(self, idx: torch.Tensor) -> dict:
        return {k: v[idx] for k, v in self.nets.items()}

    def partners(self, a: dict, generator: torch.Generator) -> tuple:
        """``(t # aug(a), t^{-1})`` for a batch ``a``: the labelled partner and its target."""
        first = next(iter(a.values()))
        t = {k: v.to(first.device)
             for k, v in self.spec.random_perms(generator, first.shape[0], self.sizes).items()}
        b = permute(augment(a, self.layout, self.aug, generator), self.spec, t)
        return b, invert_permutations(t)

    def labelled(self, n: int, generator: torch.Generator) -> tuple:
        """``(a, b, target)``: ``n`` random networks ``a``, ``b = t # aug(a)``, ``t^{-1}``."""
        a = self._take(torch.randint(self.count, (n,), generator=generator))
        return (a, *self.partners(a, generator))

    def sample(self, n: int, generator: torch.Generator) -> PairBatch:
        """``n`` items: random networks, each with a labelled and an unlabelled partner."""
        solved = None
        if self.targets is None:
            i = torch.randint(self.count, (n,), generator=generator)
            j = self.partner.draw(i, generator)
        else:
            i, j, solved = self.targets.draw(n, generator)
        a = self._take(i)
        b, target = self.partners(a, generator)
        if solved is not None:
            device = next(iter(a.values())).device
            solved = {k: v.to(device) for k, v in solved.items()}
        return PairBatch(a, b, target, self._take(j), i, solved)
