"""Fill a zoo directory chunk by chunk: resumable, deterministic, shardable across processes."""
import dataclasses
import os

import numpy as np
from tqdm.auto import tqdm

from deepalign.data import load_dataset
from deepalign.models import build_model
from deepalign.zoo._format import ensure_header, shard_name, update_manifest, write_shard
from deepalign.zoo._inr import fit_images, target_images
from deepalign.zoo._reader import Zoo
from deepalign.zoo._train import TrainSettings, model_seed, train_classifiers


def split_models(count: int, seed: int, val: float = 0.1, test: float = 0.1) -> dict:
    """A seeded train/val/test split of model indices ``0 .. count-1``.

    Returns
    -------
    dict with keys "train", "val", "test": sorted lists of int; val and test get
    ``round(val * count)`` and ``round(test * count)`` models.
    """
    if not (0 <= val and 0 <= test and val + test <= 1):
        raise ValueError(f"val and test fractions must be >= 0 and sum to <= 1, got {val}, {test}")
    order = np.random.default_rng([int(seed), 0x5B117]).permutation(count)
    n_val, n_test = round(val * count), round(test * count)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
             "train": order[n_val + n_test:]}
    return {k: sorted(int(i) for i in v) for k, v in parts.items()}


def parse_shard(text: str) -> tuple:
    """``"K/N"`` → ``(K, N)`` with ``0 <= K < N`` (K is 0-based, like a torchrun rank).

    ``"auto"`` reads torchrun's ``RANK`` and ``WORLD_SIZE`` (``(0, 1)`` when they are unset).
    """
    if text == "auto":
        text = f"{os.environ.get('RANK', 0)}/{os.environ.get('WORLD_SIZE', 1)}"
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError as exc:
        raise ValueError(f"shard must look like K/N (e.g. 0/4), got {text!r}") from exc
    if not 0 <= k < n:
        raise ValueError(f"shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def zoo_header(arch: dict, dataset: str, count: int, seed: int, settings: TrainSettings,
               chunk_size: int, val: float = 0.1, test: float = 0.1, views: int = 1,
               train_subset=None) -> dict:
    """The manifest fields that fix a zoo: everything every run and rank must agree on.

    INR zoos (``views`` fits per image) are split by image, so that all views of an image
    land in the same split. ``train_subset`` (classifiers trained on the first N training
    images) is recorded only when set, so zoos made without it keep their header.
    """
    model = build_model(arch)
    inr = model.config["arch"] == "siren"
    if views < 1 or (views > 1 and not inr) or count % views:
        raise ValueError(f"views must be >= 1, divide count={count}, and exceed 1 only for "
                         f"SIREN zoos; got views={views} for {model.config['arch']}")
    if train_subset is not None and (inr or int(train_subset) < 1):
        raise ValueError(f"train_subset must be a positive number of training images, and only "
                         f"for classifiers; got {train_subset} for {model.config['arch']}")
    subset = {} if train_subset is None else {"train_subset": int(train_subset)}
    split = split_models(count // views, seed, val, test)
    return {"arch": model.config, "dataset": dataset, "count": int(count),
            "keys": list(model.state_dict()),
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "split": {k: [i * views + v for i in ids for v in range(views)]
                      for k, ids in split.items()},
            "training": {"seed": int(seed), "chunk_size": int(chunk_size), "optimizer": "adamw",
                         "task": "fit-images" if inr else "classify", "views": int(views),
                         **subset, **settings.to_json()}}


def _train_chunk(header: dict, data, indices: list, settings: TrainSettings, on_epoch) -> tuple:
    """Train models ``indices`` of the zoo; returns stacked weights and their records."""
    seeds = [model_seed(header["training"]["seed"], i) for i in indices]
    if header["training"]["task"] == "classify":
        stacked, records = train_classifiers(header["arch"], data, seeds, settings, on_epoch)
        return stacked, [{"index": i, **r} for i, r in zip(indices, records)]
    views = header["training"]["views"]
    stacked, records = fit_images(header["arch"], target_images(data, indices, views), seeds,
                                  settings, on_epoch)
    return stacked, [{"index": i, "image": i // views, "view": i % views, **r}
                     for i, r in zip(indices, records)]


def train_zoo(out: str, dataset: str, arch: dict, count: int,
              settings: TrainSettings = TrainSettings(), seed: int = 0, chunk_size: int = 250,
              shard=(0, 1), val: float = 0.1, test: float = 0.1, views: int = 1,
              data_root=None, progress: bool = True, train_subset=None):
    """Train a zoo of ``count`` models into the directory ``out``.

    Classifiers (MLP, CNN, ResNet) learn ``dataset``; SIRENs fit its first ``count / views``
    training images, ``views`` independent fits each (model ``i`` fits image ``i // views``).

    The models are trained ``chunk_size`` at a time as one batched computation; each finished
    chunk is written atomically, so re-running the same call resumes where a killed run stopped
    (losing at most the chunk in progress). Model ``i``'s initialisation, data order and
    hyper-parameters depend only on ``(seed, i)``. With ``shard=(K, N)`` this process trains
    chunks ``K, K + N, K + 2N, ...``; N processes with the same arguments fill one zoo, and
whichever finishes last writes the complete manifest (on file systems without working
``flock`` across machines, re-running any rank afterwards rebuilds it from the shards).

    Parameters
    ----------
    out : str
        Zoo directory (created; an existing zoo must have been made with the same settings).
    dataset : str
        A :func:`deepalign.data.load_dataset` name.
    arch : dict
        Architecture config, e.g. ``MLP(64, [32, 32], 10).config``.
    count : int
        Number of models.
    settings : TrainSettings
        Epochs, batch size and the learning-rate / weight-decay ranges.
    seed : int
    chunk_size : int
        Models per batched computation and per shard file.
    shard : (int, int)
        ``(K, N)``: this process's part of the work.
    val, test : float
        Fractions of models (of images, for INRs) in the validation and test splits.
    views : int
        Fits per image (SIREN zoos only).
    data_root : str, optional
        Passed to :func:`load_dataset`.
    progress : bool
        Show a tqdm bar (model-epochs).
    train_subset : int, optional
        Classifiers train on (and report ``train_*`` metrics for) only the first
        ``train_subset`` training images; the test split is always complete.

    Returns
    -------
    Zoo or None
        The zoo if it is complete after this call (other ranks may still be working).
    """
    if int(count) < 1 or int(chunk_size) < 1:
        raise ValueError(f"count and chunk_size must be >= 1, got {count}, {chunk_size}")
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard (K, N) needs 0 <= K < N, got {shard}")
    data = load_dataset(dataset, root=data_root)
    header = zoo_header(arch, dataset, count, seed, settings, chunk_size, val, test, views,
                        train_subset)
    if train_subset is not None:
        if train_subset > len(data.X_train):
            raise ValueError(f"train_subset={train_subset} exceeds the {len(data.X_train)} "
                             f"training images of {dataset!r}")
        data = dataclasses.replace(data, X_train=data.X_train[:train_subset],
                                   y_train=data.y_train[:train_subset])
    if header["training"]["task"] == "fit-images" and count // views > len(data.X_train):
        raise ValueError(f"count / views = {count // views} images, but {dataset!r} has only "
                         f"{len(data.X_train)} training images")
    ensure_header(out, header)
    chunks = [(s, min(s + chunk_size, count)) for s in range(0, count, chunk_size)][k::n]
    todo = [(a, b) for a, b in chunks if not os.path.isfile(os.path.join(out, shard_name(a, b)))]
    bar = tqdm(total=sum(b - a for a, b in todo) * settings.epochs, unit="model-epoch",
               disable=not progress, desc=f"zoo {os.path.basename(os.path.abspath(out))}")
    for a, b in todo:
        stacked, records = _train_chunk(header, data, list(range(a, b)), settings, bar.update)
        write_shard(out, a, stacked, records)
        manifest = update_manifest(out, header)
        metric = "test_acc" if "test_acc" in records[0] else "psnr"
        bar.set_postfix({metric: f"{np.mean([r[metric] for r in manifest['models']]):.3f}"})
    bar.close()
    manifest = update_manifest(out, header)
    return Zoo(out) if manifest["complete"] else None
