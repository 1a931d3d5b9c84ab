"""deepalign: align the neurons of networks that share an architecture.

Deep-Align (Navon et al., ICML 2024), the classic re-basin baselines, loss-barrier
evaluation, model zoos and fused C++/CUDA kernels.
"""
from deepalign._version import __version__
from deepalign import ops

__all__ = ["__version__", "ops"]
