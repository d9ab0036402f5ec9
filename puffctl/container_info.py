"""`container info`: what is inside a dev container, read in one exec (no torch import, so it is quick).

The image and its build arguments (its puffctl labels), the container's Python and key package
versions, the workspace's synced commit and dirty state (.puffctl/source.json), whether the
advantage extension is built for it, and the disk the workspace volume uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from puffctl.errors import PuffctlError

if TYPE_CHECKING:
    from puffctl.engine import Engine

KEY_PACKAGES = ("torch", "numpy", "gymnasium", "pyyaml", "docker", "puffctl")

PROBE = """\
import importlib.metadata, json, os, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "packages": {}}
for name in %r:
    try:
        out["packages"][name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        out["packages"][name] = None
try:
    with open("/workspace/.puffctl/source.json") as handle:
        out["source"] = json.load(handle)
except (OSError, ValueError):
    out["source"] = None
try:
    sys.path.insert(0, "/workspace")
    from trainer import extension
    found = extension.find_build()
    out["extension"] = {"flavor": found[0], "path": str(found[1])} if found else None
except Exception as error:
    out["extension"] = {"error": f"{type(error).__name__}: {error}"}
size = 0
for root, dirs, files in os.walk("/workspace"):
    for name in files:
        try:
            size += os.lstat(os.path.join(root, name)).st_blocks * 512
        except OSError:
            pass
out["workspace_bytes"] = size
print(json.dumps(out))
""" % (KEY_PACKAGES,)


@dataclass
class ContainerInfo:
    """Everything `container info` shows about one dev container."""

    name: str
    engine_name: str
    status: str
    image: str
    image_id: str
    labels: dict = field(default_factory=dict)
    inside: dict = field(default_factory=dict)


def container_info(engine: Engine, name: str) -> ContainerInfo:
    """Read my dev container NAME's image labels and, if it runs, what is inside it."""
    from puffctl import containers

    container = containers.resolve(engine, name, verb="inspect")
    image = container.attrs["Config"].get("Image", "?")
    try:
        labels = engine.client.images.get(container.attrs["Image"]).labels or {}
    except Exception:  # noqa: BLE001 - an image removed since the container was made
        labels = {}
    info = ContainerInfo(name, container.name, container.status, image, container.attrs["Image"][7:19],
                         {k: v for k, v in labels.items() if k.startswith("puffctl.")})
    if container.status != "running":
        return info
    output: list[bytes] = []
    code = containers.run(engine, container.id, ["python", "-c", PROBE], lambda kind, data: output.append(data))
    text = b"".join(output).decode(errors="replace").strip()
    if code != 0:
        raise PuffctlError(f"box {engine.box}: could not look inside {container.name}: {text.splitlines()[-1:] or code}",
                           exit_code=1)
    info.inside = json.loads(text.splitlines()[-1])
    return info
