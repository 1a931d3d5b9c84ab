"""Evaluation of aligned pairs: interpolation, loss barriers, curves."""
from deepalign.evaluation._barrier import (BarrierResult, barrier_from_losses, loss_barrier,
                                           squared_error)
from deepalign.evaluation._interpolate import interpolate
from deepalign.evaluation._plot import plot_barrier_curves

__all__ = ["BarrierResult", "barrier_from_losses", "interpolate",
           "loss_barrier", "plot_barrier_curves", "squared_error"]
