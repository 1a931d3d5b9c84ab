"""Barrier-against-steps bookkeeping: the recorded steps and the steps-to-reach summary."""
from deepalign.comparison._convergence import record_steps, speedup_summary, steps_to_reach


def test_recorded_steps_span_the_run_and_include_its_fifth():
    steps = record_steps(1000)
    assert steps[0] == 0 and steps[-1] == 1000 and 200 in steps
    assert list(steps) == sorted(set(steps)) and len(steps) >= 12
    assert record_steps(7) == tuple(sorted(set(record_steps(7))))


def test_steps_to_reach_is_the_first_recorded_step_at_or_below_the_target():
    curve = {"steps": [0, 10, 200, 1000], "barrier": [0.9, 0.3, 0.2, 0.1]}
    assert steps_to_reach(curve, 0.2) == 200
    assert steps_to_reach(curve, 0.25) == 200
    assert steps_to_reach(curve, 0.05) is None
    summary = speedup_summary({"sinkhorn": {"steps": [0, 1000], "barrier": [1.0, 0.2]},
                               "deep_align_sinkhorn": curve})
    assert summary["deep_align_sinkhorn_steps_to_reach"] == 200
    assert summary["fraction_of_steps"] == 0.2
