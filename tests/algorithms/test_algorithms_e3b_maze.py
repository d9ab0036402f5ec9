"""The maze ablation (bench/ablations/exploration-maze.yaml) tests what the e3b profile claims."""

from pathlib import Path

from puffctl import profiles
from puffctl.batch import spec as batch_spec

SPEC = Path(__file__).resolve().parents[2] / "bench" / "ablations" / "exploration-maze.yaml"


def test_the_maze_ablation_runs_the_e3b_profile_with_and_without_its_bonus_at_the_profiles_budget():
    spec = batch_spec.load(SPEC)
    cells = batch_spec.expand(spec)
    profile = profiles.build_config(profiles.load("e3b"), seed=1)
    assert len(spec.seeds) == 5 and spec.baseline == "baseline" and spec.target == 0.8
    for cell in cells:
        assert cell.config["env"] == profile["env"]
        assert cell.config["train"]["total_timesteps"] == profile["train"]["total_timesteps"]
    coefs = {cell.variant: cell.config["train"]["e3b_coef"] for cell in cells}
    assert coefs == {"baseline": 0, "e3b": profile["train"]["e3b_coef"]} and coefs["e3b"] > 0
