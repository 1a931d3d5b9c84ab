"""Offline image data sets for training model zoos (no downloads, ever)."""
from deepalign.data._datasets import (DATASETS, DatasetNotFoundError, ImageDataset, load_dataset,
                                      read_idx)

__all__ = ["DATASETS", "DatasetNotFoundError", "ImageDataset", "load_dataset", "read_idx"]
