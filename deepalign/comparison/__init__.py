"""Side-by-side evaluation of the alignment methods (the Deep-Align paper's tables)."""
from deepalign.comparison._compare import MethodResult, compare_methods
from deepalign.comparison._methods import ABLATIONS, LABELS, METHODS, AlignmentTask, run_method
from deepalign.comparison._paired import paired_ratio
from deepalign.comparison._pairs import held_out_pairs
from deepalign.comparison._report import format_table, write_report

__all__ = ["ABLATIONS", "AlignmentTask", "LABELS", "METHODS", "MethodResult", "compare_methods",
           "format_table", "paired_ratio", "run_method", "held_out_pairs", "write_report"]
