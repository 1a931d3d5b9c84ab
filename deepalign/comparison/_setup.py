"""Build an ``AlignmentTask`` from a zoo: its model, spec, data and held-out pairs."""
import torch

from deepalign.comparison._methods import AlignmentTask
from deepalign.comparison._pairs import held_out_pairs
from deepalign.data import load_dataset
from deepalign.evaluation import squared_error
from deepalign.zoo import fitted_images


def task_from_zoo(zoo, aligner=None, n_pairs: int = 64, sinkhorn_steps: int = 1000,
                  seed: int = 0, progress: bool = False, correction_samples: int = 1000) -> tuple:
    """The held-out test pairs of ``zoo`` as an :class:`AlignmentTask`, and the test data.

    Classifier zoos: activation matching and Sinkhorn re-basin may use the zoo's training
    images; barriers are measured on its test images (cross-entropy). INR zoos: pairs are two
    fits of one held-out image, and every method and barrier uses that image (squared error
    per pixel), as in the paper's INR experiments. Corrections (REPAIR, BN reset) measure
    their statistics on ``correction_samples`` training inputs drawn with ``seed``.

    Returns
    -------
    task : AlignmentTask
    test_data : tuple (x, y)
    """
    if zoo.dataset is None:
        raise ValueError(f"zoo {zoo.path} records no image data set; barriers need one")
    spec = zoo.spec()
    idx_a, idx_b = held_out_pairs(zoo, n_pairs, seed=seed)
    if aligner is not None:
        aligner.check_compatible(spec, zoo.state_dict(idx_a[0]))
    if zoo.fits_images:
        train_data = test_data = fitted_images(zoo, idx_a)
        extra = {"loss_fn": squared_error, "targets_per_pair": True}
    else:
        data = load_dataset(zoo.dataset)
        train_data, test_data = (data.X_train, data.y_train), (data.X_test, data.y_test)
        extra = {}
    x = train_data[0]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    task = AlignmentTask(zoo.build_model(), spec, zoo.stacked(idx_a), zoo.stacked(idx_b),
                         train_data, aligner, sinkhorn_steps, seed, progress,
                         correction_data=x[pick[:correction_samples]], **extra)
    return task, test_data
