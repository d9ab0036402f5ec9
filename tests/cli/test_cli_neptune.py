"""The Neptune sink against the real client in offline mode: data in the run dir, never blocking,
failures turned into messages, the token never written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainer.neptune_sink import NeptuneSink, series

DATA = Path(__file__).parent / "data"
CONFIG = {"env": {"name": "gym:CartPole-v1"}, "logger": {"backend": "neptune", "neptune_project": None}}


@pytest.fixture(autouse=True)
def restore_data_directory(monkeypatch):
    # the sink points NEPTUNE_DATA_DIRECTORY at its run dir (in the trainer that is its own process)
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", "unused")


def events() -> list[dict]:
    return [json.loads(line) for line in (DATA / "completed.jsonl").read_text().splitlines()]


def logged_paths(run_dir: Path) -> set[str]:
    paths = set()
    for log in (run_dir / "neptune").rglob("data-*.log"):
        for line in log.read_text().splitlines():
            paths.add("/".join(json.loads(line)["obj"].get("path", [])))
    return paths


def test_cli_series_namespaces():
    progress = events()[1]
    keys = series(progress)
    assert keys["environment/episode_return"] == 21.5
    assert keys["losses/policy_loss"] == -0.01
    assert keys["performance/sps"] == 10000.0 and keys["performance/evaluate/env"] == 0.03
    assert keys["performance/util/cpu_percent"] == 95.0 and "performance/util/gpu_percent" not in keys


def test_cli_offline_without_token_writes_inside_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    monkeypatch.delenv("NEPTUNE_PROJECT", raising=False)
    messages: list[tuple[str, str]] = []
    started = time.perf_counter()
    sink = NeptuneSink(tmp_path, CONFIG, lambda level, text: messages.append((level, text)))
    for event in events():
        sink.handle(event)
    queued = time.perf_counter() - started
    assert queued < 0.2, f"construction and handle() took {queued:.3f}s: they must not wait for Neptune"
    sink.close()
    assert any(level == "info" and "offline" in text and str(tmp_path / "neptune") in text for level, text in messages)
    paths = logged_paths(tmp_path)
    for path in ("config/env/name", "environment/episode_return", "losses/value_loss", "performance/train/learn",
                 "performance/sps", "status", "checkpoints", "source/git/commit"):
        assert path in paths, path


def test_cli_bad_token_falls_back_offline_and_is_never_written(tmp_path, monkeypatch):
    secret = "not-a-real-neptune-token-5f2c"
    monkeypatch.setenv("NEPTUNE_API_TOKEN", secret)
    monkeypatch.setenv("NEPTUNE_PROJECT", "lab/puffctl")
    messages: list[tuple[str, str]] = []
    sink = NeptuneSink(tmp_path, CONFIG, lambda level, text: messages.append((level, text)))
    for event in events():
        sink.handle(event)
    sink.close()
    assert messages[0][0] == "warning" and "online start failed" in messages[0][1] and "\n" not in messages[0][1]
    assert any("offline" in text for _, text in messages[1:])
    assert all(secret not in text for _, text in messages)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_cli_failure_mid_run_becomes_a_message(tmp_path, monkeypatch):
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    messages: list[tuple[str, str]] = []
    sink = NeptuneSink(tmp_path, CONFIG, lambda level, text: messages.append((level, text)))
    # Neptune refuses to turn an attribute into a namespace: a real failure, raised by the client.
    sink.handle({"type": "progress", "agent_steps": 1, "env": {"score": 1.0}})
    sink.handle({"type": "progress", "agent_steps": 2, "env": {"score": {"best": 2.0}}})
    sink.handle({"type": "progress", "agent_steps": 3, "env": {"score": 3.0}})
    sink.close()
    failures = [text for level, text in messages if level == "warning"]
    assert len(failures) == 1 and "training goes on" in failures[0] and "environment/score" in failures[0]
