"""Classic alignment baselines: weight matching, activation matching, Sinkhorn re-basin, merging.

All align B to A, accept single state_dicts or batches of pairs, and return hard perms in the
format of CONTRACTS.md (int64 ``(n,)`` or ``(B, n)`` per perm name).
"""
from deepalign.baselines._activation_matching import activation_matching
from deepalign.baselines._descent import descent_units
from deepalign.baselines._merge import MergeResult, merge
from deepalign.baselines._sinkhorn_rebasin import sinkhorn_rebasin
from deepalign.baselines._similarity import matching_cost
from deepalign.baselines._weight_matching import (sweep_rng, weight_matching,
                                                  weight_matching_objective)

__all__ = ["MergeResult", "activation_matching", "descent_units", "matching_cost", "merge",
           "sinkhorn_rebasin", "sweep_rng", "weight_matching", "weight_matching_objective"]
