"""Ablation specs: expansion, stable cell ids, and every bad input as one line, exit 2, nothing created."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from puffctl import cli
from puffctl.batch import spec as batch_spec
from puffctl.batch import state

GOOD = {
    "name": "adv",
    "seeds": 2,
    "steps": 4096,
    "variants": [{"label": "puff", "profile": "baseline"},
                 {"label": "gae", "profile": "baseline", "set": ["train.advantage=gae"]}],
}


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_(**changes) -> dict:
    return {**GOOD, **changes}


def puffctl(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point in-process: its exit code, stdout and stderr."""
    monkeypatch.setenv("COLUMNS", "500")
    monkeypatch.setattr(sys, "argv", ["puffctl", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_ablate_expand_grid_and_stable_ids(tmp_path):
    spec = batch_spec.load(write(tmp_path, with_(grid={"train.learning_rate": [0.01, 0.02]}, seeds=[3, 5])))
    cells = batch_spec.expand(spec)
    assert len(cells) == 2 * 2 * 2 and len({cell.cell_id for cell in cells}) == 8
    assert {cell.group for cell in cells} == {"puff train.learning_rate=0.01", "puff train.learning_rate=0.02",
                                              "gae train.learning_rate=0.01", "gae train.learning_rate=0.02"}
    gae = next(cell for cell in cells if cell.variant == "gae" and cell.seed == 5 and cell.point[0][1] == 0.02)
    assert gae.config["train"]["advantage"] == "gae" and gae.config["train"]["seed"] == 5
    assert gae.config["train"]["learning_rate"] == 0.02 and gae.config["train"]["total_timesteps"] == 4096
    renamed = with_(grid={"train.learning_rate": [0.02, 0.01]}, seeds=[5, 3],
                    variants=[{"label": "GAE!", "profile": "baseline", "set": {"train.advantage": "gae"}}, GOOD["variants"][0]])
    again = batch_spec.expand(batch_spec.load(write(tmp_path, renamed)))
    assert {cell.cell_id for cell in again} == {cell.cell_id for cell in cells}
    assert batch_spec.baseline_group(spec, gae) == "puff train.learning_rate=0.02"


def test_ablate_stop_at_steps_keeps_each_profiles_schedule(tmp_path, monkeypatch, capsys):
    cells = batch_spec.expand(batch_spec.load(write(tmp_path, with_(stop_at_steps=1024))))
    assert {(cell.config["train"]["stop_at_steps"], cell.config["train"]["total_timesteps"]) for cell in cells} == {(1024, 4096)}
    code, out, _ = puffctl(monkeypatch, capsys, "ablate", "run", str(write(tmp_path, with_(stop_at_steps=1024))), "--dry-run",
                           "--dir", str(tmp_path / "ablations"))
    assert code in (None, 0) and out.count("1.0k of 4.1k") == 4, out


def bad_specs() -> list[tuple[object, str]]:
    return [
        (with_(variants=[{"label": "x", "profile": "baselin"}]), "variant 'x': unknown profile 'baselin' (did you mean baseline?)"),
        (with_(colour="red"), "unknown key 'colour'"),
        (with_(variants=[{"label": "x", "profile": "baseline", "sets": {}}]), "variants[0]: unknown key 'sets' (did you mean set?)"),
        (with_(variants=[{"label": "x", "profile": "baseline", "set": {"train.learning_rat": 0.1}}]),
         "cell x seed 1: --set: unknown key train.learning_rat (did you mean train.learning_rate?)"),
        (with_(variants=[{"label": "x", "profile": "baseline", "set": {"train.learning_rate": -1}}]),
         "cell x seed 1: --set: train.learning_rate=-1.0 must be > 0"),
        (with_(grid={"train.learning_rate": [0.01, "fast"]}), "cell puff train.learning_rate=\"fast\" seed 1: --set: train.learning_rate='fast' must be a number"),
        (with_(grid={}), "grid is empty"),
        (with_(grid={"train.learning_rate": []}), "grid train.learning_rate: empty list of values"),
        (with_(seeds=2.5), "seeds=2.5 must be an integer >= 1"),
        (with_(seeds=[1, "two"]), "seed='two' must be an integer >= 0"),
        (with_(seeds=[1, 1]), "seeds repeat"),
        (with_(seeds=[]), "seeds is an empty list"),
        (with_(variants=[GOOD["variants"][0], {"label": "puff", "profile": "baseline", "set": ["train.seed=1"]}]), "duplicate variant label 'puff'"),
        (with_(baseline="vtrace"), "baseline 'vtrace' is not a variant (variants: puff, gae)"),
        (with_(variants=[GOOD["variants"][0], {"label": "same", "profile": "baseline", "set": {"train.advantage": "puff"}}]),
         "have the same config"),
        (with_(name="../up"), "invalid run id"),
        (with_(variants=[]), "variants must be a non-empty list"),
        (with_(metric="env..x"), "must be a dotted event key"),
        (with_(env="gym:CartPole-v9"), "did you mean gym:CartPole-v1"),
        (with_(retries=-1), "retries=-1 must be an integer >= 0"),
        (with_(stop_at_steps=0), "stop_at_steps=0 must be an integer >= 1"),
        (with_(stop_at_steps=8192), "train.stop_at_steps=8192 must be <= train.total_timesteps=4096"),
        ("name: [unclosed", "invalid YAML"),
        ("- a list", "a spec must be a YAML mapping"),
    ]


def test_ablate_bad_specs_are_one_line_exit_2_and_create_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ablations"
    for data, message in bad_specs():
        path = write(tmp_path, data)
        for extra in ([], ["--dry-run"]):
            code, out, err = puffctl(monkeypatch, capsys, "ablate", "run", str(path), "--dir", str(root), *extra)
            assert code == 2, (data, out, err)
            assert message in err, (data, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
            assert not root.exists() or not list(root.iterdir()), data


def test_ablate_bad_names_and_files(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ablations"
    cases = [
        (["ablate", "run", str(tmp_path / "missing.yaml")], "no such spec file"),
        (["ablate", "resume", "nope"], "no batch 'nope'"),
        (["ablate", "status", "../x"], "invalid run id"),
        (["ablate", "report", "nope"], "no batch 'nope'"),
    ]
    for args, message in cases:
        code, _, err = puffctl(monkeypatch, capsys, *args, "--dir", str(root))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_ablate_dry_run_lists_cells_and_an_estimate(tmp_path, monkeypatch, capsys):
    code, out, _ = puffctl(monkeypatch, capsys, "ablate", "run", str(write(tmp_path, GOOD)), "--dry-run", "--slots", "2",
                           "--dir", str(tmp_path / "ablations"))
    assert code is None or code == 0
    assert "adv: 4 cells (dry run)" in out and "train.advantage=gae" in out and "estimated" in out and "on 2 slot(s)" in out
    assert not (tmp_path / "ablations").exists()


def test_ablate_existing_batch_is_refused_and_resume_of_a_finished_batch_says_so(tmp_path, monkeypatch, capsys):
    from puffctl.batch import engine

    path = write(tmp_path, GOOD)
    batch = engine.create(tmp_path / "ablations", engine.plan(path))
    code, _, err = puffctl(monkeypatch, capsys, "ablate", "run", str(path), "--dir", str(tmp_path / "ablations"))
    assert code == 2 and "batch 'adv' already exists" in err and "ablate resume adv" in err
    for current in batch.state.values():
        current.status = "completed"
    batch.save()
    code, _, err = puffctl(monkeypatch, capsys, "ablate", "resume", "adv", "--dir", str(tmp_path / "ablations"))
    assert code == 2 and "every cell completed" in err
    assert [name for name in state.list_batches(tmp_path / "ablations")] == ["adv"]
