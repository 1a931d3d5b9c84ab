"""Label-free training of Deep-Align: pairs, augmentations, losses, the trainer."""
from deepalign.training._allocator import keep_freed_memory
from deepalign.training._augment import Augmentation, augment
from deepalign.training._checkpoint import load_checkpoint, save_checkpoint
from deepalign.training._distill import (DistillationTargets, distillation_loss,
                                         distillation_targets)
from deepalign.training._logging import MetricLog, read_metrics
from deepalign.training._losses import alignment_loss, interpolation_loss, supervised_loss
from deepalign.training._pairs import PairBatch, PairSampler
from deepalign.training._plot import plot_training
from deepalign.training._selection import BarrierValidator
from deepalign.training._trainer import TrainConfig, step_generator, train

__all__ = ["Augmentation", "BarrierValidator", "DistillationTargets", "MetricLog", "PairBatch",
           "PairSampler", "TrainConfig", "alignment_loss", "augment", "distillation_loss",
           "distillation_targets", "interpolation_loss", "keep_freed_memory",
           "load_checkpoint", "plot_training", "read_metrics", "save_checkpoint",
           "step_generator", "supervised_loss", "train"]
