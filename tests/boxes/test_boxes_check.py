"""`box check` and `box provision` against the real engine (which has no GPU and no NVIDIA runtime)."""

import subprocess

import pytest

from puffctl import boxes
from puffctl.errors import PuffctlError

pytestmark = [pytest.mark.docker]

IMAGE = "puffctl-test/busybox:1"


@pytest.fixture
def local(config_dir, clean_engine, docker_engine):
    return docker_engine.url


def _line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f"  {name}:" in line)


def test_cpu_box_is_healthy(local, cli):
    boxes.add_box("cpu", local, cpu_only=True)
    result = cli("box", "check", "cpu", "--image", IMAGE, "--min-disk-gb", "0.1", "--shm-size", "2g")
    assert result.exit_code == 0, result.output
    assert "pass  engine: Docker 20.10" in result.output and "API 1.41" in result.output
    assert _line(result.output, "gpus").startswith("skip")
    assert _line(result.output, "disk").startswith("pass")
    assert "/dev/shm of 2.0 GiB" in _line(result.output, "shared memory")
    assert boxes.get_box("cpu").health["status"] == "healthy"
    listed = cli("box", "list")
    assert "healthy" in listed.output and "cpu only" in listed.output


def test_gpu_box_without_gpus_fails_clearly(local, cli):
    boxes.add_box("gpu", local)
    result = cli("box", "check", "gpu", "--image", IMAGE, "--min-disk-gb", "0.1")
    assert result.exit_code == 1
    runtime = _line(result.output, "nvidia runtime")
    assert runtime.startswith("fail") and "no nvidia runtime" in runtime
    gpus = _line(result.output, "gpus")
    assert gpus.startswith("fail") and "no NVIDIA container runtime" in gpus
    assert _line(result.output, "driver vs image cuda").startswith("skip")
    assert "fix: install the NVIDIA Container Toolkit" in result.output
    health = boxes.get_box("gpu").health
    assert health["status"] == "unhealthy" and health["failed"] == ["nvidia runtime", "gpus"]
    listed = cli("box", "list")
    row = next(line for line in listed.output.splitlines() if line.startswith("│ gpu "))
    assert "unhealthy (nvidia runtime, gpus)" in row


def test_missing_image_and_small_disk(local, cli, clean_engine):
    boxes.add_box("cpu", local, cpu_only=True)
    missing = cli("box", "check", "cpu")
    assert missing.exit_code == 1
    assert "fail  image: puffctl-dev:cpu is not on the box" in missing.output
    assert "fix: run `puffctl box provision cpu`" in missing.output
    assert _line(missing.output, "disk").startswith("skip")

    full = cli("box", "check", "cpu", "--image", IMAGE, "--min-disk-gb", "1000000")
    disk = _line(full.output, "disk")
    assert full.exit_code == 1 and disk.startswith("fail") and "need 1e+06" in disk
    assert "docker system prune" in full.output
    assert clean_engine.containers.list(all=True) == []  # probe containers are gone


def test_small_shm_dev_container_is_flagged(local, cli):
    boxes.add_box("cpu", local, cpu_only=True)
    assert cli("container", "up", "cpu", "--image", IMAGE, "--network", "none", "--shm-size", "64m").exit_code == 0
    result = cli("box", "check", "cpu", "--image", IMAGE, "--min-disk-gb", "0.1")
    assert result.exit_code == 1
    assert "fail  shm of dev: dev container dev has /dev/shm of 64 MiB" in result.output


TEST_DOCKERFILE = """\
ARG BASE_IMAGE=scratch
FROM ${BASE_IMAGE}
ARG IMAGE_CUDA=
COPY . /workspace
RUN test -f /workspace/pkg/train.py && test ! -e /workspace/notes.txt
LABEL puffctl.cuda="${IMAGE_CUDA}"
CMD ["sleep", "infinity"]
"""


def _commit(repo, *paths):
    subprocess.run(["git", "-C", str(repo), "add", *paths], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "commit", "-qm", "dockerfile"], check=True)


def test_provision_builds_from_tracked_files_then_checks(local, cli, git_repo):
    boxes.add_box("cpu", local, cpu_only=True)
    (git_repo / "containers").mkdir()
    (git_repo / "containers" / "Dockerfile.test").write_text(TEST_DOCKERFILE)
    _commit(git_repo, "containers/Dockerfile.test")
    result = cli("box", "provision", "cpu", "--variant", "cpu", "--repo", git_repo,
                 "--dockerfile", "containers/Dockerfile.test", "--build-arg", f"BASE_IMAGE={IMAGE}",
                 "--network", "none", "--min-disk-gb", "0.1")
    assert result.exit_code == 0, result.output
    assert "Step 1/" in result.output and "built puffctl-dev:cpu on cpu" in result.output
    assert "pass  image: puffctl-dev:cpu present" in result.output and "box cpu: healthy" in result.output

    # the default image of a CPU box is now there; a fresh workspace volume starts as the image's copy
    assert cli("container", "up", "cpu", "--network", "none").exit_code == 0
    shown = cli("container", "exec", "cpu", "--", "cat", "pkg/train.py")
    assert shown.exit_code == 0 and "hello from the box" in shown.output


def test_failed_build_is_one_line(local, cli, git_repo):
    boxes.add_box("cpu", local, cpu_only=True)
    (git_repo / "containers").mkdir()
    (git_repo / "containers" / "Dockerfile.test").write_text(f"FROM {IMAGE}\nRUN exit 7\n")
    _commit(git_repo, "containers/Dockerfile.test")
    result = cli("box", "provision", "cpu", "--repo", git_repo, "--dockerfile", "containers/Dockerfile.test",
                 "--network", "none", "--tag", "puffctl-test/broken:1")
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: box cpu: image build failed") and "returned a non-zero code: 7" in error


def test_untracked_dockerfile_is_refused(local, cli, git_repo):
    boxes.add_box("cpu", local, cpu_only=True)
    (git_repo / "Dockerfile.untracked").write_text(f"FROM {IMAGE}\n")
    result = cli("box", "provision", "cpu", "--repo", git_repo, "--dockerfile", "Dockerfile.untracked")
    assert result.exit_code == 2 and "is not a git-tracked file" in result.output


def test_real_dockerfile_takes_its_base_from_build_args(local, cli):
    """The dev Dockerfile parses and builds on the base it is given; offline it stops at apt-get.

    (Nothing can be pulled here, so the CUDA base and the package installs are not exercised.)
    """
    from pathlib import Path

    boxes.add_box("cpu", local, cpu_only=True)
    repo = Path(__file__).resolve().parents[2]
    result = cli("box", "provision", "cpu", "--variant", "cpu", "--repo", repo, "--network", "none",
                 "--build-arg", f"BASE_IMAGE={IMAGE}", "--tag", "puffctl-test/devimage:1", "--no-check")
    assert result.exit_code == 1
    # past FROM without a pull (the base came from the build arg), then apt-get is not in busybox
    assert "Step 2/" in result.raw.output and "Step 3/" in result.raw.output and "apt-get update" in result.raw.output
    assert "image build failed" in result.output and "returned a non-zero code: 127" in result.output


@pytest.mark.parametrize("driver, cuda, torch_version, index", [
    ("575.51.03", "12.8", "2.7.1", "https://wheels.invalid/cu128"),
    ("560.35.03", "12.6", "2.7.1", ""),
    ("550.54.15", "12.4", "2.6.0", ""),  # tests/boxes/data/h100x8_nvidia-smi.txt
    ("535.104.05", "12.1", "2.5.1", "https://wheels.invalid/cu121"),
    ("525.60.13", "11.8", "2.5.1", "https://wheels.invalid/cu118"),
])
def test_match_driver_picks_the_newest_base_the_driver_runs(driver, cuda, torch_version, index):
    args = boxes.match_driver(driver, "https://wheels.invalid/")
    assert (args["IMAGE_CUDA"], args["TORCH_VERSION"], args["TORCH_INDEX_URL"]) == (cuda, torch_version, index)
    assert f"nvidia/cuda:{cuda}." in args["BASE_IMAGE"] and "devel" in args["BASE_IMAGE"]


def test_match_driver_refuses_old_drivers_and_missing_indexes():
    with pytest.raises(PuffctlError, match="older than every known CUDA base"):
        boxes.match_driver("470.82.01")
    with pytest.raises(PuffctlError, match="--torch-index"):
        boxes.match_driver("535.104.05")


def test_provision_match_driver_records_the_choice_as_labels(local, cli, git_repo, docker_client):
    boxes.add_box("gpu", local)
    nodriver = cli("box", "provision", "gpu", "--match-driver", "--repo", git_repo)
    assert nodriver.exit_code == 2 and "box check gpu" in nodriver.output
    boxes.record_health("gpu", {"status": "healthy", "gpus": {"gpus": [], "driver": "550.54.15", "cuda": "12.4"}})
    (git_repo / "containers").mkdir()
    (git_repo / "containers" / "Dockerfile.test").write_text(
        f"FROM {IMAGE}\nARG BASE_IMAGE\nARG IMAGE_CUDA\nARG TORCH_VERSION\nARG TORCH_INDEX_URL\n"
        "RUN echo \"base=$BASE_IMAGE torch=$TORCH_VERSION\"\n")
    _commit(git_repo, "containers/Dockerfile.test")
    result = cli("box", "provision", "gpu", "--match-driver", "--repo", git_repo, "--dockerfile",
                 "containers/Dockerfile.test", "--network", "none", "--tag", "puffctl-test/matched:1", "--no-check")
    assert result.exit_code == 0, result.output
    assert "driver 550.54.15: CUDA 12.4 base nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04, torch 2.6.0" in result.output
    labels = docker_client.images.get("puffctl-test/matched:1").labels
    assert labels["puffctl.cuda"] == "12.4" and labels["puffctl.torch"] == "2.6.0"
    assert labels["puffctl.base"] == "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    assert labels["puffctl.matched-driver"] == "550.54.15"
