"""Start the real parts the box/container tests talk to: a private Docker engine and a loopback sshd.

- dockerd (Debian's docker.io) on a private socket under a temp dir, vfs storage, no bridge,
  no iptables, its own data/exec roots and pidfile; never /var/run/docker.sock.
- sshd (OpenSSH) on 127.0.0.1 and a free high port, generated host and user keys, its own
  sshd_config; the login gets DOCKER_HOST pointing at the private engine (sshd `SetEnv`), so
  `docker system dial-stdio` on the "remote" side reaches the same engine.
- a test image built locally from Debian's busybox-static (nothing can be pulled).

Usable from conftest.py, and by hand: `python tests/tooling/boxes_realparts.py` starts both,
prints the environment to use, and stops them on Enter.
"""

from __future__ import annotations

import ctypes
import getpass
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from puffctl.engine import stop_process

TEST_IMAGE = "puffctl-test/busybox:1"
PYTHON_IMAGE = "puffctl-test/python:1"
#: Top-level packages the trainer imports (a short CartPole run's sys.modules), and what they lazily need.
PYTHON_PACKAGES = ("torch", "torchgen", "numpy", "numpy.libs", "yaml", "_yaml", "gymnasium", "farama_notifications",
                   "cloudpickle", "sympy", "mpmath", "psutil", "tqdm", "colorama", "typing_extensions.py",
                   "filelock", "fsspec", "jinja2", "markupsafe", "networkx")
#: Parts of the Python tree no training run touches (tests, headers, GUI, static libraries).
PYTHON_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "torch/include", "torch/test",
               "site-packages")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "puffctl-test"
BUSYBOX = Path("/bin/busybox")
SSHD = Path("/usr/sbin/sshd")


class RealPartsError(RuntimeError):
    """A real part could not be started; the message says why and what to install."""


try:
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Child-side: stop the engine/sshd if the test process is killed before its cleanup runs."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RealPartsError(f"{what} did not come up in {timeout:.0f} s\n{tail}")
        time.sleep(0.05)


@dataclass
class DockerEngine:
    root: Path
    process: subprocess.Popen
    socket_path: Path
    log: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        subprocess.run(["umount", "-R", str(self.root / "exec")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def ssh_masters(pid: int) -> list[int]:
    """Pids of the OpenSSH master connections that process `pid` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and argv[0] == b"ssh" and b"ControlMaster=yes" in argv:
            found.append(int(entry.name))
    return found


def sweep_leftovers() -> None:
    """Remove temp dirs of engines/sshds from killed test runs (their pidfile's process is gone).

    Only dirs older than a minute: a concurrent session's engine may not have written its pidfile yet.
    """
    tmp = Path(tempfile.gettempdir())
    old = time.time() - 60
    for root in tmp.glob("pf-dk-*"):
        if root.stat().st_mtime < old and not _alive(root / "docker.pid"):
            subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
    for root in tmp.glob("pf-ssh-*"):
        if root.stat().st_mtime < old and not _alive(root / "sshd.pid"):
            shutil.rmtree(root, ignore_errors=True)


def start_dockerd(root: Path | None = None) -> DockerEngine:
    """Start a private dockerd; raise RealPartsError with the reason if it cannot run here."""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise RealPartsError("dockerd not found: run tests/tooling/install-system-deps.sh (Debian's docker.io)")
    if os.geteuid() != 0:
        raise RealPartsError("dockerd needs root here (rootless mode is not set up by the test tooling)")
    sweep_leftovers()
    root = root or Path(tempfile.mkdtemp(prefix="pf-dk-"))  # short: containerd's socket path must fit
    sock, log = root / "docker.sock", root / "dockerd.log"
    argv = [dockerd, "--host", f"unix://{sock}", "--storage-driver", "vfs", "--bridge", "none",
            "--iptables=false", "--ip6tables=false", "--ip-masq=false",
            "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"), "--log-level", "warn"]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    engine = DockerEngine(root, process, sock, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise RealPartsError(f"dockerd exited with {process.returncode}:\n{log.read_text()[-1500:]}")
        probe = subprocess.run(["docker", "-H", engine.url, "version", "--format", "{{.Server.APIVersion}}"],
                               capture_output=True)
        return probe.returncode == 0

    try:
        _wait_for(ready, 60, "dockerd", log)
    except BaseException:
        engine.stop()
        raise
    return engine


def build_test_image(docker_url: str, tag: str = TEST_IMAGE) -> str:
    """FROM scratch + busybox-static with its applets installed: a shell, coreutils, df, tail."""
    import docker

    if not BUSYBOX.exists():
        raise RealPartsError("/bin/busybox missing: run tests/tooling/install-system-deps.sh (busybox-static)")
    dockerfile = (b"FROM scratch\nCOPY busybox /bin/busybox\n"
                  b"RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
                  b"RUN mkdir -p /tmp /workspace /root && chmod 1777 /tmp\n"
                  b"ENV PATH=/bin HOME=/root\nCMD [\"/bin/sh\"]\n")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(BUSYBOX, arcname="busybox")
    context.seek(0)
    client = docker.DockerClient(base_url=docker_url, version="auto")
    try:
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, network_mode="none")
    finally:
        client.close()
    return tag


def _shared_libraries(paths: list[Path]) -> set[Path]:
    """Every shared library `ldd` resolves for these binaries, with the dynamic loader."""
    libraries = {Path("/lib64/ld-linux-x86-64.so.2")}
    for start in range(0, len(paths), 64):
        listing = subprocess.run(["ldd", *map(str, paths[start:start + 64])], capture_output=True, text=True).stdout
        libraries.update(Path(os.path.normpath(m)) for m in re.findall(r"=> (/\S+) \(", listing))
    return libraries


def python_rootfs(cache_dir: Path = CACHE_DIR) -> Path:
    """A root filesystem tar holding this machine's Python, the trainer's packages and busybox; cached.

    The cache key is the interpreter and the installed versions of the packages, so a changed
    environment builds a new tar; writers race safely (temp file + rename).
    """
    import hashlib
    import importlib.metadata
    import sys
    import sysconfig

    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    key = hashlib.sha256(f"{sys.version}|{prefix}|{versions}|{PYTHON_PACKAGES}|dist-info".encode()).hexdigest()[:16]
    target = cache_dir / f"python-rootfs-{key}.tar"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    members: list[Path] = [Path(sys.executable).resolve(), *prefix.glob("lib/libpython*")]
    skip = {stdlib / part for part in PYTHON_SKIP} | {site / part for part in PYTHON_SKIP}
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        members += [Path(root, f) for f in files if not f.endswith(".a")]
    members += [p for d in site.glob("*.dist-info") for p in d.iterdir() if p.is_file()]  # importlib.metadata
    for name in PYTHON_PACKAGES:
        top = site / name
        if top.is_file():
            members.append(top)
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if Path(root, d) not in skip]
            members += [Path(root, f) for f in files if not f.endswith(".a")]
    binaries = [p for p in members if ".so" in p.name or p == Path(sys.executable).resolve()]
    libraries = _shared_libraries(binaries) - set(members)
    fd, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tar.tmp")
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
            for directory in ("tmp", "workspace", "root", "bin", "dev", "proc", "sys", "etc"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, arcname="bin/busybox")
            for applet in ("sh", "cat", "kill", "mkdir", "rm", "tail", "df", "ls", "sleep", "test", "echo", "env",
                           "du", "dirname", "ps"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
            passwd = b"root:x:0:0:root:/root:/bin/sh\n"
            info = tarfile.TarInfo("etc/passwd")
            info.size = len(passwd)
            tar.addfile(info, io.BytesIO(passwd))
            for path in members:
                tar.add(path, arcname=str(path).lstrip("/"), recursive=False)
            for path in libraries:  # the real file under the name the loader asks for
                tar.add(path.resolve(), arcname=str(path).lstrip("/"), recursive=False)
            info = tarfile.TarInfo("usr/local/bin/python")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(Path(sys.executable).resolve()), 0o777
            tar.addfile(info)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    return target


def build_python_image(docker_url: str, tag: str = PYTHON_IMAGE) -> str:
    """Import python_rootfs() as an image that runs the real trainer (`python` on PATH); skip if present."""
    present = subprocess.run(["docker", "-H", docker_url, "image", "inspect", tag], capture_output=True)
    if present.returncode == 0:
        return tag
    rootfs = python_rootfs()
    with open(rootfs, "rb") as data:
        done = subprocess.run(["docker", "-H", docker_url, "import",
                               "--change", "ENV PATH=/usr/local/bin:/bin HOME=/root",
                               "--change", 'CMD ["/bin/sh"]', "-", tag], stdin=data, capture_output=True)
    if done.returncode != 0:
        raise RealPartsError(f"docker import of {rootfs} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return tag


@dataclass
class SSHServer:
    root: Path
    process: subprocess.Popen
    port: int
    user: str
    log: Path
    client_config: Path
    alias: str = "puffbox"
    badkey_alias: str = "puffbox-badkey"
    extra: dict = field(default_factory=dict)

    def accepted_connections(self) -> int:
        """How many SSH logins (TCP connections that authenticated) sshd has accepted so far."""
        return self.log.read_text(errors="replace").count("Accepted publickey for")

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process, grace=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "puffctl-test", "-f", str(path)],
                   check=True)


def start_sshd(docker_url: str, root: Path | None = None) -> SSHServer:
    """Start sshd on loopback with generated keys; logins get DOCKER_HOST=docker_url."""
    if not SSHD.exists():
        raise RealPartsError("sshd not found: run tests/tooling/install-system-deps.sh (openssh-server)")
    root = root or Path(tempfile.mkdtemp(prefix="pf-ssh-"))
    user, port, log = getpass.getuser(), _free_port(), root / "sshd.log"
    _keygen(root / "host_ed25519")
    _keygen(root / "id_ed25519")
    _keygen(root / "id_bad")
    (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # Debian's privilege-separation directory
    (root / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
LogLevel VERBOSE
SetEnv DOCKER_HOST={docker_url}
""")
    host_key = (root / "host_ed25519.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    client_config = root / "ssh_config"
    client_config.write_text(f"""\
Host puffbox
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {root}/id_ed25519
Host puffbox-badkey
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {root}/id_bad
Host 127.0.0.1
  IdentityFile {root}/id_ed25519
Host *
  IdentitiesOnly yes
  UserKnownHostsFile {root}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
""")
    process = subprocess.Popen([str(SSHD), "-D", "-f", str(root / "sshd_config"), "-E", str(log)],
                               stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    server = SSHServer(root, process, port, user, log, client_config)

    def listening() -> bool:
        if process.poll() is not None:
            raise RealPartsError(f"sshd exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait_for(listening, 15, "sshd", log)
    except BaseException:
        server.stop()
        raise
    return server


class Tarpit:
    """A loopback TCP port that accepts connections (kernel backlog) but never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


if __name__ == "__main__":
    engine = start_dockerd()
    try:
        build_test_image(engine.url)
        sshd = start_sshd(engine.url)
        try:
            print(f"export DOCKER_HOST={engine.url}")
            print(f"export PUFFCTL_SSH_CONFIG={sshd.client_config}  # then: ssh://{sshd.alias}")
            input("engine and sshd running; press Enter to stop them ")
        finally:
            sshd.stop()
    finally:
        engine.stop()
