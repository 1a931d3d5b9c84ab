"""Corrections for merged networks: REPAIR and BatchNorm reset (Jordan et al., ICLR 2023)."""
from deepalign.correction._repair import (CORRECTIONS, Correction, correct_merge, repair,
                                          reset_bn)
from deepalign.correction._sites import CorrectionSite, correction_sites

__all__ = ["CORRECTIONS", "Correction", "CorrectionSite", "correct_merge", "correction_sites",
           "repair", "reset_bn"]
