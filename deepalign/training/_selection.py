"""Model selection: the loss barrier of real held-out pairs aligned with hard perms.

The official code selects on one random batch of its training-time reconstruction loss; here
the criterion is what users care about, computed properly: a fixed set of validation pairs
(two different networks each, drawn once from a seed), aligned by ``DeepAlign.align`` (exact
assignment, eval mode), then ``deepalign.loss_barrier`` over several image batches. The same
pairs also give the exactness on synthetic pairs ``(v, t # v)``.
"""
import torch

from deepalign.evaluation import loss_barrier
from deepalign.training._pairs import PartnerRule
from deepalign.training._task_data import TaskData
from deepalign.weightspace import invert_permutations, permute


class BarrierValidator:
    """Scores an aligner on fixed validation pairs.

    Parameters
    ----------
    nets : dict of str to Tensor, each (N, *shape)
        Validation networks (N >= 2).
    spec : PermutationSpec
    model : nn.Module
        The zoo architecture.
    data : tuple (x, y) or TaskData
        Images and labels for the barrier (several batches of ``batch_size``); a
        :class:`TaskData` of the validation networks also gives the pairing rule and the loss
        (INR zoos: views of one image, scored against it).
    n_pairs : int
    n_points : int
        Points on the interpolation grid.
    seed : int
    batch_size : int
    """

    def __init__(self, nets: dict, spec, model, data: tuple, n_pairs: int = 32,
                 n_points: int = 11, seed: int = 0, batch_size: int = 512):
        count = next(iter(nets.values())).shape[0]
        task = data if isinstance(data, TaskData) else TaskData(*data)
        gen = torch.Generator().manual_seed(seed)
        i = torch.randint(count, (n_pairs,), generator=gen)
        j = PartnerRule(count, task.groups).draw(i, gen)
        self.a = {k: v[i] for k, v in nets.items()}
        self.b = {k: v[j] for k, v in nets.items()}
        device = next(iter(nets.values())).device
        self.t = {k: v.to(device) for k, v in
                  spec.random_perms(gen, n_pairs, spec.perm_sizes(nets, batched=True)).items()}
        self.spec, self.model, self.loss_fn = spec, model, task.loss_fn
        self.per_pair = task.per_network
        self.data = (task.x, task.y[i] if task.per_network else task.y)
        self.n_points, self.batch_size = n_points, batch_size

    def barrier(self, perms: dict) -> float:
        """Mean barrier of the validation pairs with B aligned by ``perms`` (B, n)."""
        aligned = permute(self.b, self.spec, perms)
        result = loss_barrier(self.model, self.a, aligned, self.data, n_points=self.n_points,
                              batch_size=self.batch_size, loss_fn=self.loss_fn,
                              targets_per_pair=self.per_pair)
        return float(result.barrier.mean())

    @torch.no_grad()
    def __call__(self, aligner) -> dict:
        """``{"barrier", "exact"}``: mean barrier, and the fraction of perms recovered exactly
        from ``(v, t # v)`` pairs (one count per pair and permutation)."""
        was_training = aligner.training
        aligner.eval()
        try:
            dtype = next(aligner.parameters()).dtype
            a = {k: v.to(dtype) for k, v in self.a.items()}
            b = {k: v.to(dtype) for k, v in self.b.items()}
            barrier = self.barrier(aligner.align(a, b))
            moved = permute(a, self.spec, self.t)
            found, want = aligner.align(a, moved), invert_permutations(self.t)
            exact = torch.stack([(found[k] == want[k]).all(-1) for k in want]).float().mean()
        finally:
            aligner.train(was_training)
        return {"barrier": barrier, "exact": float(exact)}
