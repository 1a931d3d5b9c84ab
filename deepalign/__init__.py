"""deepalign: align the neurons of networks that share an architecture.

Deep-Align (Navon et al., ICML 2024), the classic re-basin baselines, loss-barrier
evaluation, model zoos and fused C++/CUDA kernels.
"""
from deepalign._version import __version__
from deepalign import ops
from deepalign.data import load_dataset
from deepalign.models import batched_forward, build_model
from deepalign.zoo import Zoo, ZooPairs, train_zoo
from deepalign.baselines import activation_matching, merge, sinkhorn_rebasin, weight_matching
from deepalign.evaluation import interpolate, loss_barrier
from deepalign.correction import repair, reset_bn
from deepalign.weightspace import PermutationSpec, check_equivalent, permute
from deepalign.nn import DeepAlign, WeightSpaceEncoder

__all__ = ["__version__", "ops", "Zoo", "ZooPairs", "batched_forward", "build_model",
           "load_dataset", "train_zoo", "PermutationSpec", "activation_matching", "check_equivalent",
           "interpolate", "loss_barrier", "merge", "permute", "repair", "reset_bn",
           "sinkhorn_rebasin",
           "weight_matching", "DeepAlign", "WeightSpaceEncoder"]
