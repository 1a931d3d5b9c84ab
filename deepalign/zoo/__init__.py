"""Model zoos: batched training, the on-disk format, import, and pair data sets."""
from deepalign.zoo._build import parse_shard, split_models, train_zoo
from deepalign.zoo._format import ZooFormatError
from deepalign.zoo._import import import_zoo, infer_arch
from deepalign.zoo._inr import fit_images, fitted_images, image_grid
from deepalign.zoo._pairs import ZooPairs
from deepalign.zoo._plot import plot_zoo
from deepalign.zoo._reader import Zoo
from deepalign.zoo._train import TrainSettings, evaluate_classifiers, model_seed, train_classifiers

__all__ = ["TrainSettings", "Zoo", "ZooFormatError", "ZooPairs", "evaluate_classifiers",
           "fit_images", "fitted_images", "image_grid", "import_zoo", "infer_arch",
           "model_seed", "parse_shard", "plot_zoo", "split_models", "train_classifiers",
           "train_zoo"]
