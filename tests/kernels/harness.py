"""Boot Debian's stock kernels under QEMU (TCG) and reach them over SSH, to test slab captures.

Python 3.11 stdlib only. Importable (``from tests.kernels import harness``, or ``from . import
harness`` inside tests/kernels) and runnable::

    python -m tests.kernels.harness fetch 6.1 6.12      # download + extract the kernel packages
    python -m tests.kernels.harness build 6.1           # build the initramfs (cached)
    python -m tests.kernels.harness boot 6.12           # boot, print the ssh command, wait for ^C
    python -m tests.kernels.harness boot 6.1 -- uname -r    # boot, run one command, power off
    python -m tests.kernels.harness record 6.1 6.12     # record kernel facts into tests/fixtures/kernels/

What it does (see /work/shared/KERNEL-MATRIX.md for why):

* resolves the current Debian package for a kernel series with ``apt-cache`` (6.1 and 5.10: what
  their release's ``linux-image-amd64`` depends on, else the newest ``linux-image-6.1.0-N-amd64`` /
  ``linux-image-5.10.0-N-amd64``; 6.12: the newest ``linux-image-6.12.N+deb12-amd64``; the
  ``-unsigned`` variant only where the signed one is missing), downloads it with ``apt-get
  download`` and extracts it with ``dpkg-deb -x``, all under ``tests/kernels/cache/`` (reused
  later; offline, the newest cached .deb of the series is used). 5.10 is Debian 11's (bullseye):
  apt reads bullseye's package lists from a private state in ``cache/apt/bullseye/`` (this
  machine's mirror, its -security twin, Debian's keyring), leaving this machine's apt sources as
  they are;
* builds an uncompressed newc initramfs from this machine's binaries: static busybox (the
  applets), ``dash`` as ``/bin/sh`` (Debian's; busybox ash would run its own ``find`` applet
  even where GNU find is on PATH), bpftrace and perf with their ``ldd`` libraries, OpenSSH's
  ``sshd`` on port 22 and dropbear on port 2222 (throwaway host keys and an authorised client key, generated
  into the cache), GNU ``find`` and ``getconf`` (slabkit's SSH target runs ``find -printf`` and
  ``getconf PAGESIZE``, which busybox lacks), the kernel's own
  NIC modules (``.ko.xz`` decompressed on the host) and the project's workload ``slabwork``
  (bench/slabwork.c, built ``-static`` into the cache);
* boots ``qemu-system-x86_64 -accel tcg`` with user networking forwarding free loopback ports to
  the guest's ports 22 (OpenSSH, :attr:`Guest.port`) and 2222 (dropbear,
  :attr:`Guest.dropbear_port`), and waits until ``ssh ... true`` answers. :class:`Guest` is a context
  manager: boot on enter, power off (sysrq ``o``) on exit, else kill the qemu process by its pid;
  qemu gets ``PR_SET_PDEATHSIG`` so it never outlives the Python process;
* ``guest.target()`` is a :class:`slabkit.host.ssh.SSHTarget` for the booted guest, so slabkit's
  real capture path (``slabkit.capture(..., host=guest.target())``) runs against it.

Host packages it needs (``qemu-system-x86``, ``busybox-static``, ``dropbear-bin``,
``openssh-client``, ``openssh-server``, ``gcc``) are installed with apt-get when missing (root only).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("SLABKIT_KERNEL_CACHE", HERE / "cache"))
FIXTURES = REPO / "tests" / "fixtures" / "kernels"
SLABWORK_SRC = REPO / "bench" / "slabwork.c"  # the project's workload (bench/workload.py)

# Series we know how to fetch: name regex for `apt-cache search --names-only`.
SERIES = {
    "5.10": r"^linux-image-5\.10\.0-[0-9]+-amd64(-unsigned)?$",
    "6.1": r"^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$",
    "6.12": r"^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$",
}
#: Series whose packages come from another Debian release than this machine's (bookworm):
#: series -> suite. They are resolved and downloaded through a private apt state in the cache
#: (``cache/apt/<suite>/``: its own sources list and package lists), so this machine's apt
#: sources are not touched. Debian 11 (bullseye) is in LTS: its kernels are in -security.
APT_SUITES = {"5.10": "bullseye"}
#: series whose release's ``linux-image-amd64`` metapackage points at the current ABI
METAPACKAGE_SERIES = {"5.10": r"linux-image-5\.10\.0-\d+-amd64", "6.1": r"linux-image-6\.1\.0-\d+-amd64"}
APT_LISTS_MAX_AGE_S = 7 * 24 * 3600   # refresh a private suite's package lists after a week
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# Host binaries -> Debian package providing them.
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "dropbear": "dropbear-bin",
    "dropbearkey": "dropbear-bin",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "/usr/sbin/sshd": "openssh-server",  # copied into the guest (not run on the host)
    "/usr/bin/perf": "linux-perf",  # copied into the guest (slabkit's perf backend there)
    "gcc": "gcc",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}
BUSYBOX_STATIC = "/bin/busybox"

# Dynamic host binaries copied into the initramfs with their ldd libraries (replacing a busybox
# applet of the same path): bpftrace and perf (slabkit's tracers), the SSH server, and what
# slabkit's SSHTarget runs that busybox lacks: `getconf PAGESIZE` (slabinfo page size) and GNU
# `find -printf` (cgroup id -> path map of a capture; /sys/kernel/slab listing in one process).
GUEST_BINARIES = ["/usr/bin/bpftrace", "/usr/bin/perf", "/usr/sbin/sshd", "/usr/sbin/dropbear",
                  "/usr/bin/getconf", "/usr/bin/find", "/bin/dash"]
GUEST_SH = "/bin/dash"  # becomes the guest's /bin/sh (root's login shell)
GUEST_DROPBEAR_PORT = 2222

# NIC model -> module names needed for it (each resolved with its dependencies; builtins skipped).
NIC_MODULES = {
    "virtio-net-pci": ["virtio_pci", "virtio_net"],
    "e1000": ["e1000"],
}

SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-o", "ServerAliveInterval=15",
    "-o", "ServerAliveCountMax=8",
]


class HarnessError(RuntimeError):
    """Something the harness needs is missing or failed (message says what)."""


def log(msg: str) -> None:
    if os.environ.get("SLABKIT_HARNESS_QUIET") != "1":
        print(f"[harness] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    check = kw.pop("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(argv, check=check, **kw)
    except subprocess.CalledProcessError as e:
        raise HarnessError(f"{' '.join(argv)} failed ({e.returncode}): {(e.stderr or '')[-2000:]}") from e
    except FileNotFoundError as e:
        raise HarnessError(f"{argv[0]} not found") from e


@contextlib.contextmanager
def cache_lock(name: str = "harness") -> Iterator[None]:
    """Serialise cache writers (other engineers' test runs share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# host packages


def _busybox_is_static() -> bool:
    try:
        out = _run(["file", "-L", BUSYBOX_STATIC], check=False).stdout
        if "statically linked" in out or "static-pie" in out:
            return True
    except HarnessError:
        pass
    try:  # no `file`: a dynamic ELF has a PT_INTERP naming ld-linux
        return b"ld-linux" not in Path(BUSYBOX_STATIC).read_bytes()[:4096]
    except OSError:
        return False


def ensure_host_packages() -> None:
    """apt-get install what is missing (qemu, static busybox, dropbear, ssh client/server, gcc)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not _busybox_is_static():
        missing.append("busybox-static")
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"missing host packages {missing}; install them as root (apt-get install ...)")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=False, env=env)
    if r.returncode != 0:  # stale lists: update once and retry
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


# --------------------------------------------------------------------------------------------
# kernel packages


@dataclasses.dataclass
class Kernel:
    series: str
    package: str
    version: str
    release: str  # `uname -r` of this kernel
    root: Path  # extracted package tree

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules_dir(self) -> Path:
        for base in ("lib/modules", "usr/lib/modules"):
            p = self.root / base / self.release
            if p.is_dir():
                return p
        raise HarnessError(f"no modules directory for {self.release} in {self.root}")

    def config_value(self, option: str) -> str | None:
        """'y', 'm', a value, or None (unset) for CONFIG_<option> in the package's config."""
        want = option if option.startswith("CONFIG_") else f"CONFIG_{option}"
        for line in self.config.read_text().splitlines():
            if line.startswith(want + "="):
                return line.split("=", 1)[1]
        return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name.replace("amd64", "")))


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt sources use (deb.debian.org if none is found)."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(f.read_text())
    for text in texts:
        for m in re.finditer(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+/debian)/?\s", text, re.MULTILINE):
            return m.group(1)
    return "http://deb.debian.org/debian"


def apt_options(series: str) -> list[str]:
    """``-o`` options that point apt-get/apt-cache at the private state of ``series``'s suite
    (none for this machine's own release). The state is created, and its package lists
    fetched (``apt-get update``), when missing or older than :data:`APT_LISTS_MAX_AGE_S`."""
    suite = APT_SUITES.get(series)
    if suite is None:
        return []
    d = CACHE / "apt" / suite
    mirror = _debian_mirror()
    security = mirror.rsplit("/", 1)[0] + "/debian-security"
    opts = ["-o", f"Dir::Etc::SourceList={d / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::Cache={d / 'cache'}",
            "-o", "Dir::State::status=/dev/null"]
    with cache_lock(f"apt-{suite}"):
        (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = (f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n"
                   f"deb [signed-by={DEBIAN_KEYRING}] {security} {suite}-security main\n")
        src = d / "sources.list"
        if not src.exists() or src.read_text() != sources:
            src.write_text(sources)
            (d / ".updated").unlink(missing_ok=True)
        stamp = d / ".updated"
        if not stamp.exists() or time.time() - stamp.stat().st_mtime > APT_LISTS_MAX_AGE_S:
            log(f"apt-get update ({suite}, private lists in {d})")
            r = _run(["apt-get", *opts, "update", "-q"], check=False)
            if r.returncode == 0:
                stamp.write_text(_dt.datetime.now().isoformat() + "\n")
            else:
                log(f"apt-get update ({suite}) failed: {(r.stderr or r.stdout)[-500:]}")
    return opts


def resolve_package(series: str) -> str:
    """The exact current package name for a kernel series, from apt-cache (signed preferred)."""
    if series not in SERIES:
        raise HarnessError(f"unknown kernel series {series!r}; known: {sorted(SERIES)}")
    override = os.environ.get(f"SLABKIT_KERNEL_PKG_{series.replace('.', '_')}")
    if override:
        return override
    apt = apt_options(series)
    rx = re.compile(SERIES[series])
    out = _run(["apt-cache", *apt, "search", "--names-only", SERIES[series]], check=False).stdout
    names = sorted({ln.split(" - ")[0].strip() for ln in out.splitlines() if rx.match(ln.split(" - ")[0].strip())})
    if series in METAPACKAGE_SERIES:  # prefer what the release's metapackage points at (the current ABI)
        dep = _run(["apt-cache", *apt, "depends", "linux-image-amd64"], check=False).stdout
        m = re.search(rf"Depends: ({METAPACKAGE_SERIES[series]})\s*$", dep, re.MULTILINE)
        if m and m.group(1) in names:
            return m.group(1)
    signed = [n for n in names if not n.endswith("-unsigned")]
    pool = signed or names
    for name in sorted(pool, key=_version_key, reverse=True):
        pol = _run(["apt-cache", *apt, "policy", name], check=False).stdout
        if re.search(r"Candidate: (?!\(none\))\S+", pol):
            return name
    raise HarnessError(f"apt-cache knows no package for kernel {series} (run apt-get update?)")


def _cached_debs(series: str) -> list[Path]:
    rx = re.compile(SERIES[series])
    debs = [p for p in (CACHE / "debs").glob("linux-image-*.deb") if rx.match(p.name.split("_")[0])]
    return sorted(debs, key=lambda p: _version_key(p.name.split("_")[0]), reverse=True)


def fetch_kernel(series: str) -> Kernel:
    """Download (once) and extract (once) the kernel package for ``series``."""
    with cache_lock():
        debdir = CACHE / "debs"
        debdir.mkdir(parents=True, exist_ok=True)
        try:
            package = resolve_package(series)
        except HarnessError:
            cached = _cached_debs(series)
            if not cached:
                raise
            package = cached[0].name.split("_")[0]
            log(f"apt-cache failed; using cached {cached[0].name}")
        debs = sorted(debdir.glob(f"{package}_*.deb"))
        if not debs:
            t = time.monotonic()
            log(f"apt-get download {package}")
            _run(["apt-get", *apt_options(series), "download", package], cwd=debdir)
            debs = sorted(debdir.glob(f"{package}_*.deb"))
            if not debs:
                raise HarnessError(f"apt-get download {package} produced no .deb in {debdir}")
            log(f"downloaded {debs[-1].name} in {time.monotonic() - t:.1f}s")
        deb = debs[-1]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        root = CACHE / "kernels" / deb.stem
        stamp = root / ".extracted"
        if not stamp.exists():
            t = time.monotonic()
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            _run(["dpkg-deb", "-x", str(deb), str(root)])
            stamp.write_text(deb.name + "\n")
            log(f"extracted {deb.name} in {time.monotonic() - t:.1f}s")
        mods = [p for base in ("lib/modules", "usr/lib/modules") for p in (root / base).glob("*") if p.is_dir()]
        if len(mods) != 1:
            raise HarnessError(f"expected one modules dir in {root}, found {mods}")
        return Kernel(series=series, package=package, version=version, release=mods[0].name, root=root)


# --------------------------------------------------------------------------------------------
# kernel modules (no modules.dep in the package: read `depends=` from each .ko's .modinfo)


def _module_files(kernel: Kernel) -> dict[str, Path]:
    files = {}
    for p in (kernel.modules_dir / "kernel").rglob("*.ko*"):
        name = p.name.split(".ko")[0].replace("-", "_")
        files[name] = p
    return files


def _builtin_modules(kernel: Kernel) -> set[str]:
    f = kernel.modules_dir / "modules.builtin"
    if not f.exists():
        return set()
    return {Path(ln.strip()).name.split(".ko")[0].replace("-", "_") for ln in f.read_text().splitlines() if ln.strip()}


def _ko_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return _run(["zstd", "-dc", str(path)], text=False).stdout
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _modinfo_depends(ko: bytes) -> list[str]:
    m = re.search(rb"\x00depends=([^\x00]*)\x00", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def resolve_modules(kernel: Kernel, wanted: list[str]) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko bytes) in load order, for ``wanted`` and their dependencies."""
    files = _module_files(kernel)
    builtin = _builtin_modules(kernel)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise HarnessError(f"module {name} is neither built into {kernel.release} nor shipped as a .ko")
        data = _ko_bytes(files[name])
        for dep in _modinfo_depends(data):
            visit(dep)
        order.append((name, data))

    for w in wanted:
        visit(w)
    return order


# --------------------------------------------------------------------------------------------
# keys, workload


def ssh_keys() -> tuple[Path, Path]:
    """(client private key, dropbear host key), generated once into the cache (with the guest
    sshd's host key, :func:`sshd_host_key`)."""
    d = CACHE / "ssh"
    with cache_lock("keys"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        client = d / "id_ed25519"
        if not client.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slabkit-kernel-tests", "-f", str(client)])
        host = d / "dropbear_ed25519_host_key"
        if not host.exists():
            _run(["dropbearkey", "-t", "ed25519", "-f", str(host)])
        sshd_key = d / "ssh_host_ed25519_key"
        if not sshd_key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slabkit-guest", "-f", str(sshd_key)])
        return client, host


def sshd_host_key() -> Path:
    """The guest OpenSSH server's host key (generated by :func:`ssh_keys`)."""
    ssh_keys()
    return CACHE / "ssh" / "ssh_host_ed25519_key"


def build_slabwork() -> Path:
    """bench/slabwork.c built static (no shared libraries to open at exec) into the cache.

    The same source and flags as ``bench.workload.binary()``, but built under the cache lock
    (other engineers' runs share the cache) and kept apart from the host's build/ folder.
    """
    out = CACHE / "bin" / "slabwork"
    with cache_lock("slabwork"):
        if not out.exists() or out.stat().st_mtime < SLABWORK_SRC.stat().st_mtime:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            _run(["gcc", "-static", "-O2", "-Wall", "-o", str(tmp), str(SLABWORK_SRC)])
            tmp.replace(out)
    return out


# --------------------------------------------------------------------------------------------
# initramfs (newc cpio, written here: no cpio tool needed)


class _Cpio:
    def __init__(self, f):
        self.f = f
        self.ino = 300000

    def _entry(self, name: str, mode: int, data_len: int, rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, data_len, 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields) + nb
        self.f.write(hdr + b"\0" * (-len(hdr) % 4))

    def _pad(self, n: int) -> None:
        self.f.write(b"\0" * (-n % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, 0, nlink=2)

    def symlink(self, name: str, target: str) -> None:
        t = target.encode()
        self._entry(name, stat.S_IFLNK | 0o777, len(t))
        self.f.write(t)
        self._pad(len(t))

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, 0, rdev=(major, minor))

    def file(self, name: str, perm: int, data: bytes | None = None, src: Path | None = None) -> None:
        if data is not None:
            self._entry(name, stat.S_IFREG | perm, len(data))
            self.f.write(data)
            self._pad(len(data))
            return
        assert src is not None
        size = src.stat().st_size
        self._entry(name, stat.S_IFREG | perm, size)
        with open(src, "rb") as s:
            shutil.copyfileobj(s, self.f, 1 << 20)
        self._pad(size)

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, 0, nlink=1)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def parse_ldd(out: str, where: str) -> list[str]:
    """Absolute library paths in ``ldd`` output, loader included; a missing one is an error."""
    libs = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            raise HarnessError(f"ldd {where}: {line}")
    return libs


def _ldd(binary: str) -> list[str]:
    """Absolute library paths (as ldd names them) a dynamic binary needs, loader included."""
    return parse_ldd(_run(["ldd", binary]).stdout, binary)


INIT_SCRIPT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run /tmp /var/log /var/run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
hostname slabkit-guest
echo "slabkit-guest: kernel $(uname -r)"
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || echo "slabkit-guest: insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip link set eth0 up || echo "slabkit-guest: no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /run/sshd
chmod 755 /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log || { echo "slabkit-guest: sshd failed"; cat /var/log/sshd.log; }
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -p 2222 -s -E 2>>/var/log/dropbear.log
echo "slabkit-guest: ready"
while :; do sleep 3600; done
"""

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost slabkit-guest\n",
    "etc/hostname": "slabkit-guest\n",
    # OpenSSH as slabkit's real targets run it (tests/sshd.py uses the same settings)
    "etc/ssh/sshd_config": (
        "Port 22\nHostKey /etc/ssh/ssh_host_ed25519_key\nPidFile /run/sshd.pid\n"
        "AuthorizedKeysFile /root/.ssh/authorized_keys\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\n"
        "PrintLastLog no\nMaxSessions 64\nMaxStartups 64\nLogLevel VERBOSE\n"),
}


def _initramfs_plan(kernel: Kernel, nic: str) -> tuple[dict, list[tuple[str, bytes]]]:
    """dest -> ('file', src) | ('data', bytes, perm) | ('link', target); plus the modules."""
    client, hostkey = ssh_keys()
    slabwork = build_slabwork()
    plan: dict[str, tuple] = {}
    for applet in _run([BUSYBOX_STATIC, "--list-full"]).stdout.split():
        plan[applet] = ("link", "/bin/busybox")
    plan["bin/busybox"] = ("file", Path(BUSYBOX_STATIC), 0o755)
    for binary in GUEST_BINARIES:
        if not Path(binary).exists():
            raise HarnessError(f"{binary} missing on the host")
        plan[binary.lstrip("/")] = ("file", Path(binary), 0o755)
        for lib in _ldd(binary):
            plan[lib.lstrip("/")] = ("file", Path(os.path.realpath(lib)), 0o755)
    if Path("/etc/ld.so.cache").exists():
        plan["etc/ld.so.cache"] = ("file", Path("/etc/ld.so.cache"), 0o644)
    plan["usr/bin/slabwork"] = ("file", slabwork, 0o755)
    for dest, text in ETC_FILES.items():
        plan[dest] = ("data", text.encode(), 0o600 if dest == "etc/shadow" else 0o644)
    plan["etc/dropbear/dropbear_ed25519_host_key"] = ("file", hostkey, 0o600)
    plan["etc/ssh/ssh_host_ed25519_key"] = ("file", sshd_host_key(), 0o600)
    plan["bin/sh"] = ("link", GUEST_SH)
    plan["root/.ssh/authorized_keys"] = ("data", Path(str(client) + ".pub").read_bytes(), 0o600)
    plan["init"] = ("data", INIT_SCRIPT.encode(), 0o755)
    mods = resolve_modules(kernel, NIC_MODULES[nic])
    plan["modules/order"] = ("data", "".join(f"{n}\n" for n, _ in mods).encode(), 0o644)
    return plan, mods


def build_initramfs(kernel: Kernel, nic: str = "virtio-net-pci") -> Path:
    """Build (or reuse) the initramfs for ``kernel``; returns its path."""
    ensure_host_packages()
    plan, mods = _initramfs_plan(kernel, nic)
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.encode() + kernel.release.encode() + nic.encode())
    for dest in sorted(plan):
        spec = plan[dest]
        h.update(dest.encode() + spec[0].encode())
        if spec[0] == "file":
            st = spec[1].stat()
            h.update(f"{spec[1]}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif spec[0] == "data":
            h.update(spec[1])
        else:
            h.update(spec[1].encode())
    for name, data in mods:
        h.update(name.encode() + hashlib.sha256(data).digest())
    out = CACHE / "initramfs" / f"{kernel.release}-{nic}-{h.hexdigest()[:12]}.cpio"
    with cache_lock("initramfs"):
        if out.exists():
            return out
        t = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        for old in out.parent.glob(f"{kernel.release}-{nic}-*.cpio"):
            old.unlink()
        for name, data in mods:
            plan[f"modules/{name}.ko"] = ("data", data, 0o644)
        dirs = {"dev", "proc", "sys", "tmp", "run", "root", "root/.ssh", "var", "var/log", "var/run", "mnt",
                "sys/kernel", "etc/dropbear"}
        for dest in plan:
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            w = _Cpio(f)
            for d in sorted(dirs):
                w.directory(d, 0o700 if d.startswith("root") else (0o1777 if d == "tmp" else 0o755))
            w.chardev("dev/console", 5, 1)
            w.chardev("dev/null", 1, 3, 0o666)
            for dest in sorted(plan):
                spec = plan[dest]
                if spec[0] == "link":
                    w.symlink(dest, spec[1])
                elif spec[0] == "file":
                    w.file(dest, spec[2], src=spec[1])
                else:
                    w.file(dest, spec[2], data=spec[1])
            w.trailer()
        tmp.replace(out)
        log(f"built {out.name} ({out.stat().st_size >> 20} MiB, modules: "
            f"{', '.join(n for n, _ in mods) or 'none'}) in {time.monotonic() - t:.1f}s")
        return out


# --------------------------------------------------------------------------------------------
# booting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_LIVE: dict[int, subprocess.Popen] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            proc.wait()
        _LIVE.pop(pid, None)


class Guest:
    """A booted kernel reachable over SSH. ``with Guest("6.12") as g: g.ssh("uname -r")``."""

    def __init__(self, series: str = "6.1", *, memory: str = "2G", smp: int = 2, nic: str = "virtio-net-pci",
                 boot_timeout: float = 300.0, append: str = "") -> None:
        self.series = series
        self.memory = memory
        self.smp = smp
        self.nic = nic
        self.boot_timeout = boot_timeout
        self.append = append
        self.kernel: Kernel | None = None
        self.initramfs: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None  # host port forwarded to the guest's OpenSSH (22)
        self.dropbear_port: int | None = None  # host port forwarded to the guest's dropbear (2222)
        self.key: Path | None = None
        self.console_log: Path | None = None
        self.timings: dict[str, float] = {}
        self._targets: list = []  # SSHTargets handed out by target(), closed at shutdown

    # -- lifecycle
    def __enter__(self) -> Self:
        try:
            self.boot()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def release(self) -> str:
        assert self.kernel is not None
        return self.kernel.release

    def prepare(self) -> None:
        ensure_host_packages()
        t = time.monotonic()
        self.kernel = fetch_kernel(self.series)
        self.timings["fetch_s"] = time.monotonic() - t
        t = time.monotonic()
        self.initramfs = build_initramfs(self.kernel, self.nic)
        self.timings["initramfs_s"] = time.monotonic() - t
        self.key, _ = ssh_keys()

    def boot(self) -> None:
        if self.initramfs is None:
            self.prepare()
        assert self.kernel and self.initramfs
        logs = CACHE / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for old in sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-40]:  # keep the last 40
            with contextlib.suppress(OSError):
                old.unlink()
        for attempt in range(3):
            self.port = _free_port()
            self.dropbear_port = _free_port()
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.console_log = logs / f"{self.kernel.release}-{stamp}-{os.getpid()}-{self.port}.log"
            argv = [
                "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", str(self.smp), "-m", self.memory,
                "-nographic", "-no-reboot",
                "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initramfs),
                "-append", f"console=ttyS0 panic=-1 quiet {self.append}".strip(),
                "-nic", (f"user,model={self.nic},hostfwd=tcp:127.0.0.1:{self.port}-:22,"
                         f"hostfwd=tcp:127.0.0.1:{self.dropbear_port}-:{GUEST_DROPBEAR_PORT}"),
            ]
            t0 = time.monotonic()
            with open(self.console_log, "wb") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True,
                                             preexec_fn=_die_with_parent)  # noqa: PLW1509 (prctl only)
            _LIVE[self.proc.pid] = self.proc
            log(f"booting {self.kernel.release} (qemu pid {self.proc.pid}, ssh port {self.port}, dropbear port "
                f"{self.dropbear_port}, "
                f"console {self.console_log})")
            try:
                self._wait_ssh(t0)
                return
            except HarnessError:
                if "Could not set up host forwarding" in self.console_tail() and attempt < 2:
                    self._reap()
                    continue  # port race with another process: try another port
                raise

    def _wait_ssh(self, t0: float) -> None:
        deadline = t0 + self.boot_timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"qemu exited ({self.proc.returncode}) before ssh answered; console:\n"
                                   + self.console_tail())
            r = subprocess.run(self.ssh_argv("true"), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                               check=False)
            if r.returncode == 0:
                self.timings["boot_to_ssh_s"] = time.monotonic() - t0
                log(f"{self.kernel.release}: ssh answered after {self.timings['boot_to_ssh_s']:.1f}s")
                return
            if "slabkit-guest: sshd failed" in self.console_tail():
                raise HarnessError("the guest's sshd did not start; console:\n" + self.console_tail())
            if time.monotonic() > deadline:
                raise HarnessError(f"ssh did not answer within {self.boot_timeout:.0f}s; console:\n"
                                   + self.console_tail())
            time.sleep(0.5)

    def console_tail(self, n: int = 4000) -> str:
        try:
            return self.console_log.read_bytes()[-n:].decode(errors="replace") if self.console_log else ""
        except OSError:
            return ""

    def _reap(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        _LIVE.pop(proc.pid, None)
        self.proc = None

    def shutdown(self, timeout: float = 20.0) -> None:
        """Power the guest off (sysrq o), else kill qemu by its pid; always reap it."""
        proc = self.proc
        if proc is None:
            return
        while self._targets:  # their ssh control masters first (else they linger ControlPersist s)
            with contextlib.suppress(Exception):
                self._targets.pop().close()
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(self.ssh_argv("sync; echo o > /proc/sysrq-trigger"), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10, check=False)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    # -- talking to it
    def ssh_argv(self, command: str | None = None) -> list[str]:
        """The ssh command line for this guest (``command`` is run by the guest's /bin/sh)."""
        assert self.port and self.key
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port), *SSH_OPTS, "root@127.0.0.1"]
        return argv + ([command] if command is not None else [])

    def ssh(self, command: str, *, timeout: float = 300, check: bool = False, input: str | None = None,
            ) -> subprocess.CompletedProcess:
        r = subprocess.run(self.ssh_argv(command), input=input, stdin=None if input is not None else subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise HarnessError(f"guest command failed ({r.returncode}): {command}\n{r.stderr[-2000:]}")
        return r

    def read(self, path: str) -> str:
        return self.ssh(f"cat {shlex.quote(path)}", check=True).stdout

    def target(self, server: str = "openssh", **kw):
        """A :class:`slabkit.host.ssh.SSHTarget` for this guest (root over the forwarded port).

        ``server``: "openssh" (the guest's sshd, what real targets run) or "dropbear". It uses
        the harness's client key and ignores host keys (each boot is a fresh guest on a random
        port). ``kw`` goes to SSHTarget (``timeout_s``, ``stop_grace_s``, ...); its defaults are
        raised for TCG, where reading /proc/kallsyms or starting bpftrace is slow. The target is
        closed when the guest shuts down.
        """
        # imported here: the harness itself is stdlib only
        from slabkit.host.ssh import SSHTarget

        ports = {"openssh": self.port, "dropbear": self.dropbear_port}
        if server not in ports:
            raise HarnessError(f"server must be one of {sorted(ports)}, not {server!r}")
        assert ports[server] and self.key, "the guest is not booted"
        kw.setdefault("timeout_s", 120)
        kw.setdefault("connect_timeout_s", 30)
        t = SSHTarget(f"root@127.0.0.1:{ports[server]}", ssh_options=[
            "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null"], **kw)
        self._targets.append(t)
        return t


# --------------------------------------------------------------------------------------------
# bpftrace in the guest


@dataclasses.dataclass
class BpftraceRun:
    program: str
    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    workload_pid: int | None
    counts: dict[tuple[str, ...], int]  # map key parts -> count, for the first map printed

    def count_for(self, pid: int | None = None, comm: str | None = None) -> int:
        total = 0
        for key, n in self.counts.items():
            if pid is not None and (not key or key[0] != str(pid)):
                continue
            if comm is not None and (len(key) < 2 or key[1] != comm):
                continue
            total += n
        return total


_MAP_LINE = re.compile(r"^@\w*\[(?P<key>.*)\]: (?P<n>\d+)$")


def bpftrace_env(guest: Guest) -> dict[str, str]:
    """What slabkit sets for the guest's bpftrace (the host's 0.17) so that it finds the
    kernel's BTF: ``BPFTRACE_BTF`` where the kernel's BTF has no object id (before 5.11),
    decided by slabkit's own code (:func:`slabkit.backends.bpftrace.btf_workaround`)."""
    from slabkit.backends.bpftrace import btf_workaround
    from slabkit.host.facts import kernel_btf_has_id
    version = guest.ssh("bpftrace --version", check=True).stdout.split()[-1].lstrip("v")
    t = guest.target()
    try:
        return btf_workaround(version, kernel_btf_has_id(t))
    finally:
        t.close()


def run_bpftrace(guest: Guest, program: str, command: str, timeout: float = 600,
                 env: dict[str, str] | None = None) -> BpftraceRun:
    """``bpftrace -e PROGRAM -c COMMAND`` in the guest (probes attach before COMMAND starts),
    with ``env`` (e.g. :func:`bpftrace_env`) set."""
    assign = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    remote = f"{assign}BPFTRACE_STRLEN=64 bpftrace -e {shlex.quote(program)} -c {shlex.quote(command)}"
    t = time.monotonic()
    r = guest.ssh(remote, timeout=timeout)
    secs = time.monotonic() - t
    pid = None
    m = re.search(r"^pid (\d+)$", r.stdout, re.MULTILINE)
    if m:
        pid = int(m.group(1))
    counts: dict[tuple[str, ...], int] = {}
    for line in r.stdout.splitlines():
        mm = _MAP_LINE.match(line.strip())
        if mm:
            counts[tuple(p.strip() for p in mm.group("key").split(","))] = int(mm.group("n"))
    return BpftraceRun(program, command, r.returncode, r.stdout, r.stderr, secs, pid, counts)


def guest_symbols(guest: Guest, names: list[str]) -> set[str]:
    """Which of ``names`` are traceable functions in the guest (available_filter_functions)."""
    pat = "|".join(re.escape(n) for n in names)
    r = guest.ssh(f"grep -E '^({pat})( |$)' /sys/kernel/tracing/available_filter_functions")
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}


# --------------------------------------------------------------------------------------------
# recording kernel facts


BTF = "/sys/kernel/btf/vmlinux"
KMEM_EVENTS = ["kmem_cache_alloc", "kmem_cache_alloc_node", "kmalloc", "kmalloc_node", "kmem_cache_free", "kfree"]
SYMBOL_RX = re.compile(
    r"^(kmem_cache_alloc\S*|__kmalloc\S*|kmalloc\S*|kmem_cache_free|kfree|slab_alloc\S*|__slab_alloc\S*"
    r"|___slab_alloc|alloc_empty_file|path_openat|do_sys_openat2|do_syscall_64)(\.\w+)*$")
CONFIG_OPTIONS = [
    "SLUB", "SLAB", "SLOB", "SLAB_MERGE_DEFAULT", "SLUB_DEBUG", "SLUB_DEBUG_ON", "RANDOM_KMALLOC_CACHES",
    "SLAB_BUCKETS", "MEMCG", "MEMCG_KMEM", "KPROBES", "KPROBE_EVENTS", "FTRACE", "FUNCTION_TRACER",
    "DYNAMIC_FTRACE", "BPF_SYSCALL", "BPF_JIT", "DEBUG_INFO_BTF", "DEBUG_INFO_BTF_MODULES",
    "MEM_ALLOC_PROFILING", "HIST_TRIGGERS", "TRACING", "KALLSYMS_ALL", "MODULE_COMPRESS_XZ",
    "VIRTIO_NET", "VIRTIO_PCI", "E1000",
]


def _filter_symbol_lines(text: str, field: int) -> list[str]:
    keep = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > field and SYMBOL_RX.match(parts[field]):
            keep.append(line.rstrip())
    return keep


def record_facts(guest: Guest, dest_root: Path = FIXTURES) -> Path:
    """Write the kernel facts slabkit's planner needs into ``dest_root/<release>/``."""
    k = guest.kernel
    assert k is not None
    release = guest.ssh("uname -r", check=True).stdout.strip()
    out = dest_root / release
    (out / "events" / "kmem").mkdir(parents=True, exist_ok=True)
    (out / "uname-r.txt").write_text(release + "\n")
    listing = guest.ssh("ls /sys/kernel/tracing/events/kmem", check=True).stdout
    (out / "events" / "kmem-events.txt").write_text(listing)
    present = set(listing.split())
    for ev in KMEM_EVENTS:
        stale = out / "events" / "kmem" / ev
        if ev in present:
            stale.mkdir(exist_ok=True)
            (stale / "format").write_text(guest.read(f"/sys/kernel/tracing/events/kmem/{ev}/format"))
        elif stale.exists():
            shutil.rmtree(stale)
    (out / "slabinfo.txt").write_text(guest.read("/proc/slabinfo"))
    slab = guest.ssh(
        "cd /sys/kernel/slab && for f in *; do if [ -L \"$f\" ]; then echo \"$f -> $(readlink \"$f\")\"; "
        "else echo \"$f\"; fi; done", check=True).stdout
    (out / "sys-kernel-slab.txt").write_text(slab)
    sizes = guest.ssh(
        "cd /sys/kernel/slab && echo 'name object_size slab_size aliases objs_per_slab order'; for f in *; do "
        "[ -L \"$f\" ] && continue; echo \"$f $(cat $f/object_size) $(cat $f/slab_size) $(cat $f/aliases) "
        "$(cat $f/objs_per_slab) $(cat $f/order)\"; done", check=True).stdout
    (out / "sys-kernel-slab-sizes.txt").write_text(sizes)
    kallsyms = guest.read("/proc/kallsyms")
    # kallsyms addresses are randomised (KASLR) every boot: masked so re-recording does not churn.
    ks = [re.sub(r"^[0-9a-f]{16}", "0" * 16, ln) for ln in _filter_symbol_lines(kallsyms, 2)]
    (out / "kallsyms-filtered.txt").write_text("\n".join(ks) + "\n")
    aff = guest.ssh("cat /sys/kernel/tracing/available_filter_functions")
    if aff.returncode == 0 and aff.stdout:
        (out / "available_filter_functions-filtered.txt").write_text(
            "\n".join(_filter_symbol_lines(aff.stdout, 0)) + "\n")
    info = guest.ssh("bpftrace --info 2>&1", timeout=600)
    (out / "bpftrace-info.txt").write_text(info.stdout)
    # the member name kernel_btf in the kernel's BTF: the kernel gives its BTF an object id
    # (Linux 5.11+), which bpftrace before 0.18 needs (slabkit.host.facts.kernel_btf_has_id)
    has_id = guest.ssh(f"tr '\\0' '\\n' < {BTF} | grep -cx kernel_btf").stdout.strip()
    (out / "features.txt").write_text(
        f"btf_kernel_btf: {'yes' if has_id not in ('', '0') else 'no'}\n")
    cfg = [f"CONFIG_{o}={k.config_value(o)}" if k.config_value(o) is not None else f"# CONFIG_{o} is not set"
           for o in CONFIG_OPTIONS]
    (out / "config-excerpt.txt").write_text("\n".join(cfg) + "\n")
    meta = {
        "series": k.series, "package": k.package, "package_version": k.version, "release": release,
        "recorded": _dt.date.today().isoformat(),
        "command": f"python -m tests.kernels.harness record {k.series}",
        "qemu": "qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G (initramfs root, no modules but the NIC's)",
        "kallsyms_total_lines": len(kallsyms.splitlines()),
        "kallsyms_kept_lines": len(ks),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_FACTS_README.format(release=release, package=k.package, version=k.version,
                                                          series=k.series, total=len(kallsyms.splitlines()),
                                                          kept=len(ks)))
    log(f"recorded facts for {release} into {out}")
    return out


_FACTS_README = """# Kernel facts: {release}

Recorded from Debian's `{package}` ({version}) booted under QEMU TCG with an initramfs root, by
`python -m tests.kernels.harness record {series}` (see ../README.md). Files:

- `uname-r.txt`: `uname -r` in the guest.
- `events/kmem-events.txt`: `ls /sys/kernel/tracing/events/kmem`.
- `events/kmem/<event>/format`: tracefs format files of kmem_cache_alloc, kmalloc, kmem_cache_free,
  kfree (and the `_node` variants where the kernel has them).
- `slabinfo.txt`: `/proc/slabinfo` (counts are from an idle initramfs guest).
- `sys-kernel-slab.txt`: one line per `/sys/kernel/slab` entry: `name -> target` for a symlink (an
  alias of a merged cache), `name` alone for a real cache directory.
- `sys-kernel-slab-sizes.txt`: for each real cache directory: object_size, slab_size, aliases,
  objs_per_slab, order.
- `kallsyms-filtered.txt`: **filtered** `/proc/kallsyms` ({kept} of {total} lines): only symbols
  matching kmem_cache_alloc*, __kmalloc*, kmalloc*, kmem_cache_free, kfree, slab_alloc*,
  __slab_alloc*, ___slab_alloc, alloc_empty_file, path_openat, do_sys_openat2, do_syscall_64
  (with `.cold`/`.constprop.N` suffixes). Addresses are masked to zeros (KASLR makes them differ
  every boot).
- `available_filter_functions-filtered.txt`: `/sys/kernel/tracing/available_filter_functions`,
  filtered the same way (these are the kprobe/fentry-traceable ones).
- `bpftrace-info.txt`: `bpftrace --info 2>&1` in the guest (the host's bpftrace 0.17 binary).
- `features.txt`: `btf_kernel_btf: yes|no`: whether the member name `kernel_btf` is in the
  kernel's BTF (`tr '\\0' '\\n' < /sys/kernel/btf/vmlinux | grep -cx kernel_btf`): the kernel
  gives its BTF an object id (5.11+), which bpftrace before 0.18 needs to find it.
- `config-excerpt.txt`: selected options from the package's `boot/config-*`.
- `probe-checks.md`: which bpftrace probes count allocations exactly, with counts and stderr.
- `meta.json`: package, version, date, command.
"""


# --------------------------------------------------------------------------------------------
# probe checks


def filp_probe_candidates() -> list[tuple[str, str]]:
    """(label, program) for counting `filp` allocations; {fn} variants per kernel naming."""
    cast = 'str(((struct kmem_cache *)arg0)->name) == "filp"'
    out = []
    for fn in ("kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof"):
        out.append((f"kprobe:{fn}", f"kprobe:{fn} /{cast}/ {{ @[pid, comm] = count(); }}"))
    for fn in ("kmem_cache_alloc", "kmem_cache_alloc_noprof"):
        out.append((f"kfunc:{fn}", f'kfunc:{fn} /str(args->s->name) == "filp"/ {{ @[pid, comm] = count(); }}'))
    return out


def _md_block(text: str, limit: int = 3000) -> str:
    text = text.strip("\n")
    if len(text) > limit:
        text = text[:limit] + "\n... (truncated)"
    return "```\n" + (text or "(empty)") + "\n```\n"


def probe_checks(guest: Guest, n: int = 1000) -> str:
    """Run candidate bpftrace probes against slabwork workloads; return probe-checks.md text."""
    release = guest.release
    traceable = guest_symbols(guest, [
        "kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof",
        "kmalloc_trace", "__kmalloc", "__kmalloc_cache_noprof", "__kmalloc_noprof", "kmalloc_node_trace",
        "__kmalloc_node", "__kmalloc_node_noprof", "__kmalloc_cache_node_noprof"])
    sections: list[str] = []
    summary: list[str] = []
    env = bpftrace_env(guest)

    def check(label: str, program: str, command: str, expect_comm: str = "slabwork") -> BpftraceRun:
        r = run_bpftrace(guest, program, command, env=env)
        ok = r.returncode == 0 and r.workload_pid is not None
        mine = sorted(((k[2:], c) for k, c in r.counts.items()
                       if r.workload_pid and k[:2] == (str(r.workload_pid), expect_comm)), key=lambda kc: -kc[1])
        shown = ", ".join((f"{'/'.join(k)}={c}" if k else str(c)) for k, c in mine[:4]) or "0 (no events)"
        if len(mine) > 4:
            shown += f", ... ({len(mine)} keys)"
        exact = [("/".join(k) or "(pid)") for k, c in mine if c == n]
        summary.append(f"| `{label}` | `{command}` | {'works' if ok else 'FAILS'} | {shown if ok else '-'} | "
                       f"{', '.join(exact) if exact else ('no' if ok else '-')} |")
        first_err = next((ln for ln in r.stderr.splitlines() if "ERROR" in ln), "")
        sections.append(
            f"### `{label}` with `{command}`\n\nProgram: `{program}`\n\n"
            f"exit {r.returncode}, {r.seconds:.1f}s wall (TCG), slabwork pid {r.workload_pid}"
            f"{', ' + first_err if first_err and not ok else ''}\n\n"
            f"stdout:\n{_md_block(r.stdout)}\nstderr:\n{_md_block(r.stderr)}")
        return r

    open_cmd = f"/usr/bin/slabwork -n open {n} /etc/hostname"
    for label, prog in filp_probe_candidates():
        check(label, prog, open_cmd)
    # dentry (kmem_cache_alloc_lru on 5.18+) and names_cache via the stat workload
    stat_cmd = f"/usr/bin/slabwork -n stat {n} /tmp"
    for fn in ("kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof"):
        if fn in traceable:
            check(f"kprobe:{fn} by cache name", f"kprobe:{fn} /comm == \"slabwork\"/ "
                  f"{{ @[pid, comm, str(((struct kmem_cache *)arg0)->name)] = count(); }}", stat_cmd)
    # kmalloc: the tracepoint by size class, and the kprobes that take a kmem_cache pointer
    pipe_cmd = f"/usr/bin/slabwork -n pipe {n}"
    check("tracepoint:kmem:kmalloc by bytes_alloc", "tracepoint:kmem:kmalloc /comm == \"slabwork\"/ "
          "{ @[pid, comm, args->bytes_alloc, args->bytes_req] = count(); }", pipe_cmd)
    check("tracepoint:kmem:kmem_cache_alloc by bytes_alloc", "tracepoint:kmem:kmem_cache_alloc /comm == \"slabwork\"/ "
          "{ @[pid, comm, args->bytes_alloc] = count(); }", open_cmd)
    for fn in ("kmalloc_trace", "__kmalloc_cache_noprof"):
        if fn in traceable:
            check(f"kprobe:{fn} by cache name", f"kprobe:{fn} /comm == \"slabwork\"/ "
                  f"{{ @[pid, comm, str(((struct kmem_cache *)arg0)->name), arg2] = count(); }}", pipe_cmd)
    for fn in ("__kmalloc", "__kmalloc_noprof"):
        if fn in traceable:
            check(f"kprobe:{fn} by size", f"kprobe:{fn} /comm == \"slabwork\"/ "
                  f"{{ @[pid, comm, arg0] = count(); }}", pipe_cmd)
    # bulk allocations (no tracepoint): the io_uring requests of `slabwork iouring` (one NOP per
    # fresh ring; io_kiocb is merged into filp on some kernels: compare the cache it resolves to)
    bulk = sorted(guest_symbols(guest, ["kmem_cache_alloc_bulk", "kmem_cache_alloc_bulk_noprof"]))
    if bulk:
        from slabkit.host.slabinfo import resolve_cache
        t = guest.target()
        try:
            cache = resolve_cache("io_kiocb", t).name
        finally:
            t.close()
        fn = bulk[0]
        check(f"kretprobe:{fn} for {cache} (io_kiocb)",
              f'kprobe:{fn} /comm == "slabwork" && str(((struct kmem_cache *)arg0)->name) == "{cache}"/ '
              f"{{ @e[tid] = 1; }} kretprobe:{fn} /@e[tid]/ {{ delete(@e[tid]); "
              f'@[pid, comm, "calls"] = count(); @o[pid, comm, "objects"] = sum((int32)retval); }}',
              f"/usr/bin/slabwork -n iouring {n}")
    head = (f"# bpftrace probe checks on {release}\n\n"
            f"Generated by `python -m tests.kernels.harness record {guest.series}` ({_dt.date.today()}): bpftrace "
            f"0.17 in the guest, each run as `bpftrace -e PROGRAM -c 'COMMAND'` (probes attach before the "
            f"workload starts), with "
            f"{' '.join(f'`{k}={v}`' for k, v in env.items()) or 'no extra environment'} "
            f"(what slabkit sets for this kernel). N = {n}.\n\n"
            "- Counts are for the map keys (slabwork's pid, comm == \"slabwork\"); extra key parts (cache name, "
            "size) are shown as `a/b=count`. \"exact N\" lists the keys whose count is exactly N.\n"
            "- The exec of slabwork allocates one more `filp` while comm is still \"bpftrace\" (same pid): "
            "the maps below show it as a separate `bpftrace` key with count 1. Key by (pid, comm) or filter on "
            "comm to get exactly N.\n"
            "- `stat`/`open` also show N+1 or N+2 `names_cache` (and `stat` N+2 `dentry`): slabwork's static glibc "
            "start-up does `readlink(\"/proc/self/exe\")` and `newfstatat(1, \"\", AT_EMPTY_PATH)` (seen with "
            "strace on the host). 6.1 shows N+2, 6.12 N+1 (inferred, not traced: 6.12 skips getname() for the empty path).\n"
            "- `iouring`: each of the N rings gets one NOP; its request comes from the ring's request "
            "cache, which the kernel refills with one kmem_cache_alloc_bulk call of 8 (IO_REQ_ALLOC_BATCH): "
            "N calls, 8N objects, none through the allocation tracepoints.\n"
            "- `kprobe`/`kfunc` names that do not exist on this kernel are kept in the table as FAILS, with "
            "bpftrace's error in the details.\n\n"
            f"Traceable functions found (available_filter_functions): {', '.join(sorted(traceable)) or 'none'}\n\n"
            "| probe | workload | result | slabwork counts | exact N |\n|---|---|---|---|---|\n")
    return head + "\n".join(summary) + "\n\n## Details\n\n" + "\n".join(sections)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.kernels.harness", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("fetch", "build"):
        p = sub.add_parser(name)
        p.add_argument("series", nargs="*", default=list(SERIES))
    p = sub.add_parser("boot", help="boot one kernel; run a command, or wait for ^C")
    p.add_argument("series")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("record", help="record kernel facts (+ probe checks) into tests/fixtures/kernels/")
    p.add_argument("series", nargs="*", default=list(SERIES))
    p.add_argument("--no-probe-checks", action="store_true")
    p.add_argument("--probe-checks-only", action="store_true",
                   help="rewrite only probe-checks.md (the other facts do not depend on the workload)")
    p.add_argument("-n", type=int, default=1000)
    a = ap.parse_args(argv)

    if a.cmd in ("fetch", "build"):
        ensure_host_packages()
        for s in a.series:
            k = fetch_kernel(s)
            print(f"{s}: {k.package} {k.version} release {k.release} -> {k.root}")
            if a.cmd == "build":
                print(f"    initramfs {build_initramfs(k)}")
        return 0
    if a.cmd == "boot":
        with Guest(a.series) as g:
            print(f"timings: {json.dumps({k: round(v, 1) for k, v in g.timings.items()})}", file=sys.stderr)
            cmd = [c for c in a.command if c != "--"]
            if cmd:
                r = g.ssh(" ".join(cmd))
                sys.stdout.write(r.stdout)
                sys.stderr.write(r.stderr)
                return r.returncode
            print(" ".join(shlex.quote(x) for x in g.ssh_argv()))
            print("guest up; ^C powers it off", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt):
                while g.proc and g.proc.poll() is None:
                    time.sleep(1)
        return 0
    if a.cmd == "record":
        for s in a.series:
            with Guest(s) as g:
                print(f"{s}: timings {json.dumps({k: round(v, 1) for k, v in g.timings.items()})}", file=sys.stderr)
                if a.probe_checks_only:
                    out = FIXTURES / g.ssh("uname -r", check=True).stdout.strip()
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "probe-checks.md").write_text(probe_checks(g, a.n))
                    print(out)
                    continue
                out = record_facts(g)
                if not a.no_probe_checks:
                    (out / "probe-checks.md").write_text(probe_checks(g, a.n))
                print(out)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
