"""Build an ``AlignmentTask`` from a zoo: its model, spec, data and held-out pairs."""
import torch

from deepalign.comparison._methods import AlignmentTask
from deepalign.comparison._pairs import held_out_pairs
from deepalign.data import load_dataset
from deepalign.weightspace import PermutationSpec


def task_from_zoo(zoo, aligner=None, n_pairs: int = 64, sinkhorn_steps: int = 1000,
                  seed: int = 0, progress: bool = False) -> tuple:
    """The held-out test pairs of ``zoo`` as an :class:`AlignmentTask`, and the test data.

    Activation matching and Sinkhorn re-basin may use the zoo's training images; barriers
    are measured on its test images.

    Returns
    -------
    task : AlignmentTask
    test_data : tuple (x, y)
    """
    if zoo.dataset is None:
        raise ValueError(f"zoo {zoo.path} records no image data set; barriers need one")
    data = load_dataset(zoo.dataset)
    model = zoo.build_model()
    spec = PermutationSpec.from_module(model, torch.zeros(1, *data.image_shape))
    idx_a, idx_b = held_out_pairs(zoo, n_pairs, seed=seed)
    if aligner is not None:
        aligner.check_compatible(spec, zoo.state_dict(idx_a[0]))
    task = AlignmentTask(model, spec, zoo.stacked(idx_a), zoo.stacked(idx_b),
                         (data.X_train, data.y_train), aligner, sinkhorn_steps, seed, progress)
    return task, (data.X_test, data.y_test)
