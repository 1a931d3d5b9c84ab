"""Weight spaces: permutation specs, applying permutations, functional-equivalence checks."""
from deepalign.weightspace._equivalence import check_equivalent
from deepalign.weightspace._perm_sets import (compose_permutations, identity_permutations,
                                              invert_permutations, random_permutations, to_soft)
from deepalign.weightspace._permute import permute
from deepalign.weightspace._plain_view import plain_view
from deepalign.weightspace._spec import PermutationSpec
from deepalign.weightspace._structure import BlockGroup, GroupedAxis

__all__ = ["BlockGroup", "GroupedAxis", "PermutationSpec", "check_equivalent",
           "compose_permutations", "identity_permutations", "invert_permutations", "permute",
           "plain_view", "random_permutations", "to_soft"]
