"""The box registry, host URL parsing and the bad-input paths of `puffctl box` (no engine needed)."""

import json
import re
from pathlib import Path

import pytest

from puffctl import boxes, containers
from puffctl.engine import api_at_least, parse_host
from puffctl.errors import PuffctlError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, expected", [
    ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
    ("ssh://gpu1", "ssh://gpu1"),
    ("ssh://ana@gpu-01.lab.example:2222", "ssh://ana@gpu-01.lab.example:2222"),
    ("ssh://root@10.0.0.7", "ssh://root@10.0.0.7"),
])
def test_good_host_urls(url, expected):
    assert str(parse_host(url)) == expected


@pytest.mark.parametrize("url", ["", "gpu1", "tcp://gpu1:2375", "http://gpu1", "unix://relative.sock",
                                 "ssh://", "ssh://user@", "ssh://gpu1:99999", "ssh://gpu1:0", "ssh://gpu1:port",
                                 "ssh://gpu1/path", "ssh://a:pw@gpu1", "ssh://-oProxyCommand=x", "ssh://gpu 1",
                                 "ssh://bad;user@gpu1", "unix:///"])
def test_bad_host_urls(url):
    with pytest.raises(PuffctlError) as error:
        parse_host(url)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)


def test_add_list_rm(config_dir):
    boxes.add_box("gpu1", "ssh://ana@gpu1:2222")
    boxes.add_box("local", "unix:///var/run/docker.sock", cpu_only=True)
    registry = boxes.load_registry()
    assert sorted(registry) == ["gpu1", "local"]
    assert registry["local"].cpu_only and registry["local"].default_image == "puffctl-dev:cpu"
    assert registry["gpu1"].default_image == "puffctl-dev:cuda"
    stored = json.loads((config_dir / "boxes.json").read_text())
    assert stored["boxes"]["gpu1"]["host"] == "ssh://ana@gpu1:2222"
    boxes.remove_box("gpu1")
    assert sorted(boxes.load_registry()) == ["local"]


def test_config_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PUFFCTL_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert boxes.config_dir() == tmp_path / "xdg" / "puffctl"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert boxes.config_dir() == Path.home() / ".config" / "puffctl"
    monkeypatch.setenv("PUFFCTL_CONFIG_DIR", str(tmp_path / "mine"))
    assert boxes.config_dir() == tmp_path / "mine"


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


def test_cli_bad_host_url_creates_nothing(config_dir, cli):
    text = one_line_error(cli("box", "add", "gpu1", "--host", "tcp://gpu1:2375"), 2)
    assert "bad host URL" in text
    assert not (config_dir / "boxes.json").exists()


@pytest.mark.parametrize("name", ["../etc", "a/b", "UPPER", "_under", "x" * 33, "sp ace", ".hidden", ""])
def test_cli_unsafe_box_names(config_dir, cli, name):
    text = one_line_error(cli("box", "add", name, "--host", "ssh://gpu1"), 2)
    assert "bad box name" in text
    assert not (config_dir / "boxes.json").exists()


def test_name_starting_with_dash_is_refused(config_dir):
    with pytest.raises(PuffctlError, match="bad box name"):
        boxes.add_box("-oProxyCommand", "ssh://gpu1")


def test_cli_duplicate_box(config_dir, cli):
    assert cli("box", "add", "gpu1", "--host", "ssh://gpu1").exit_code == 0
    text = one_line_error(cli("box", "add", "gpu1", "--host", "ssh://other"), 2)
    assert "already exists" in text and "ssh://gpu1" in text
    assert boxes.load_registry()["gpu1"].host == "ssh://gpu1"


@pytest.mark.parametrize("args", [("box", "check", "nope"), ("box", "rm", "nope"), ("box", "provision", "nope"),
                                  ("container", "up", "nope"), ("container", "ls", "nope"),
                                  ("container", "exec", "nope", "--", "true"), ("container", "down", "nope/dev")])
def test_cli_unknown_box(config_dir, cli, args):
    text = one_line_error(cli(*args), 2)
    assert "unknown box 'nope'" in text


def test_console_entry_point_prints_one_line(config_dir, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PUFFCTL_CONFIG_DIR=str(config_dir), COLUMNS="200")  # main() wraps at 80
    done = subprocess.run([sys.executable, "-m", "puffctl", "container", "up", "nope"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: unknown box 'nope' (known: none; add one with "
                                                "`puffctl box add NAME --host URL`)"]


def test_cli_box_list_empty(config_dir, cli):
    result = cli("box", "list")
    assert result.exit_code == 0 and "no boxes yet" in result.output


def test_owner_from_env(monkeypatch):
    monkeypatch.setenv("PUFFCTL_OWNER", "bob")
    assert boxes.owner() == "bob"
    monkeypatch.setenv("PUFFCTL_OWNER", "bob/../x")
    with pytest.raises(PuffctlError):
        boxes.owner()


@pytest.mark.parametrize("spec, count, ids", [("all", -1, None), ("2", 2, None), ("0,1", 0, ["0", "1"]),
                                              ("device=3", 0, ["3"])])
def test_gpu_requests(spec, count, ids):
    request = containers.gpu_request(spec)
    assert request.count == count and (request.device_ids or None) == ids


@pytest.mark.parametrize("spec", ["0", "-1", "two", "0,x", ","])
def test_bad_gpu_requests(spec):
    with pytest.raises(PuffctlError):
        containers.gpu_request(spec)


def test_targets():
    assert containers.parse_target("gpu1") == ("gpu1", "dev")
    assert containers.parse_target("gpu1/exp2") == ("gpu1", "exp2")
    with pytest.raises(PuffctlError):
        containers.parse_target("../x/dev")


def test_build_args_and_dockerfile_agree():
    dockerfile = (REPO / "containers" / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG ([A-Z_]+)", dockerfile, flags=re.M))
    for variant in boxes.VARIANTS.values():
        assert set(variant) <= declared
    args = boxes.build_args("cpu", ["TORCH_VERSION=2.5.1"])
    assert args["TORCH_VERSION"] == "2.5.1" and args["IMAGE_CUDA"] == ""
    with pytest.raises(PuffctlError):
        boxes.build_args("rocm", [])
    with pytest.raises(PuffctlError):
        boxes.build_args("cpu", ["no-equals"])


def test_api_versions():
    assert api_at_least("1.41") and api_at_least("1.40")
    assert not api_at_least("1.39") and not api_at_least("1.9")


def test_df_parsing():
    output = ("Filesystem           1024-blocks    Used Available Capacity Mounted on\n"
              "overlay                263174212 24061028 225627392  10% /\n"
              "shm                      8388608        0   8388608   0% /dev/shm\n")
    assert boxes._parse_df(output) == {"/": (263174212, 225627392), "/dev/shm": (8388608, 8388608)}


def _add_many(args):
    directory, index = args
    import os

    os.environ["PUFFCTL_CONFIG_DIR"] = directory
    from puffctl import boxes as registry

    registry.add_box(f"b{index}", f"ssh://host{index}")
    registry.record_health(f"b{index}", {"status": "healthy", "checked": index})


def test_concurrent_commands_never_lose_a_registry_update(config_dir):
    from concurrent.futures import ProcessPoolExecutor

    boxes.add_box("first", "ssh://first")
    with ProcessPoolExecutor(8) as pool:
        list(pool.map(_add_many, [(str(config_dir), i) for i in range(16)]))
    registry = boxes.load_registry()
    assert sorted(registry) == sorted(["first", *(f"b{i}" for i in range(16))])
    assert all(registry[f"b{i}"].health["checked"] == i for i in range(16))


def test_owner_note_and_box_set(cli, config_dir):
    assert cli("box", "add", "gpu1", "--host", "ssh://gpu1", "--owner", "ana (vision)").exit_code == 0
    assert boxes.get_box("gpu1").owner == "ana (vision)"
    changed = cli("box", "set", "gpu1", "--owner", "bo", "--host", "ssh://gpu1.lab:2222", "--cpu-only")
    assert changed.exit_code == 0, changed.output
    box = boxes.get_box("gpu1")
    assert (box.owner, box.host, box.cpu_only) == ("bo", "ssh://gpu1.lab:2222", True)
    nothing = cli("box", "set", "gpu1")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    assert cli("box", "set", "gpu1", "--host", "http://x").exit_code == 2
    assert cli("box", "set", "nope", "--owner", "x").exit_code == 2
