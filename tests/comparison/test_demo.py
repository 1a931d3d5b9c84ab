"""`deepalign demo` runs end to end (tiny settings) and resumes without redoing work."""
import json
import os

import pytest

from deepalign.cli._demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = str(tmp_path / "demo")
    paths = run_demo(out, models=24, train_minutes=0.05, pairs=2, sinkhorn_steps=3,
                     distill_pairs=8, distill_steps=2)
    report = json.load(open(paths["json"]))
    assert len(report["methods"]) == 7
    assert os.path.getsize(paths["png"]) > 0
    zoo = os.path.join(out, "zoo")
    shards = {f: os.path.getmtime(os.path.join(zoo, f)) for f in os.listdir(zoo)
              if f.endswith(".safetensors")}
    run_demo(out, models=24, train_minutes=0.05, pairs=2, sinkhorn_steps=3,
             distill_pairs=8, distill_steps=2)
    # the second run finds the zoo complete and trains no model again
    assert {f: os.path.getmtime(os.path.join(zoo, f)) for f in os.listdir(zoo)
            if f.endswith(".safetensors")} == shards
