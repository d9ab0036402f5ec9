#!/bin/sh
# Install the real parts the tests need: a Docker engine (Debian's docker.io), an OpenSSH server
# and client, busybox-static (the root of the locally built test image), and a C++ compiler for
# the advantage extension.
# Idempotent: installs only what is missing. Needs root (or sudo) and the Debian package archive.
set -eu

need=""
command -v dockerd >/dev/null 2>&1 || need="$need docker.io"
command -v docker >/dev/null 2>&1 || need="$need docker.io"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ldd /bin/busybox 2>&1 | grep -q "not a dynamic" \
    || need="$need busybox-static"
command -v git >/dev/null 2>&1 || need="$need git"
command -v c++ >/dev/null 2>&1 || need="$need g++"

if [ -z "$need" ]; then
    echo "install-system-deps: docker.io, openssh, busybox-static and g++ already present"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-system-deps: installing$need"
$SUDO apt-get update -qq
# The packages' own service start is refused in containers (policy-rc.d); the tests start their own.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(echo "$need" | tr ' ' '\n' | sort -u) >/dev/null
echo "install-system-deps: done"
