"""A SystemTap compile root for a guest kernel, and a guest that can load its modules.

SystemTap cannot run on this machine's kernel (no kprobes, no modules), and compiling inside the
emulated guest takes minutes; so slabkit's stap backend compiles here, for the guest's kernel, and
loads the module there with ``staprun`` ("compile here, run there", slabkit.backends.stap). This
module builds what that needs, cached under ``tests/kernels/cache/stap/``::

    python -m tests.kernels.stap_root build 6.1     # the compile root (first run: ~1 GB download)
    python -m tests.kernels.stap_root env 6.1       # SLABKIT_STAP_ROOT=... for slabkit

* :func:`build_root` debootstraps a minimal Debian bookworm (``--variant=minbase``, mirror taken
  from this machine's apt sources), installs ``systemtap`` and ``linux-headers-<release>`` in it
  with apt, patches the root's copy of the SystemTap runtime where SystemTap 4.8 and the kernel
  headers disagree (``task_work_cancel`` became ``task_work_cancel_func`` in 6.1.9x; see
  /work/shared/KERNEL-MATRIX.md; the host's systemtap is left alone), and puts the kernel's debug
  ``vmlinux`` (from ``linux-image-<release>-dbg``, 859 MB for 6.1.0-57; only the 633 MB vmlinux
  is unpacked) where stap looks for it, ``/usr/lib/debug/boot/vmlinux-<release>``. Each step is
  stamped, so a rerun only does what is missing; ``SLABKIT_STAP_KEEP_DEB=0`` deletes the -dbg
  package after unpacking.
* :func:`stap_initramfs` is the harness's initramfs for the kernel with a second cpio archive
  appended (the kernel unpacks concatenated archives in turn) holding the root's ``staprun`` and
  ``stapio`` with the libraries they need; :func:`stap_guest` boots a :class:`harness.Guest` with
  it. Only the stap tests use it; the harness's own initramfs is unchanged.

Python 3.11 stdlib only, like the harness. Needs root (debootstrap, chroot).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import harness
from .harness import CACHE, HarnessError, Kernel, log

STAP_CACHE = CACHE / "stap"
SUITE = "bookworm"
#: what the root gets besides minbase (systemtap pulls gcc, make, elfutils' libdw)
ROOT_PACKAGES = ["systemtap"]
#: staprun runs stapio from here (Debian's systemtap-runtime)
GUEST_STAP_BINARIES = ["/usr/bin/staprun", "/usr/lib/systemtap/stapio"]
_RELEASE_RX = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,127}$")
_ROOT_STAMP = ".slabkit-stap-root.json"


def _check_release(release: str) -> str:
    if not _RELEASE_RX.fullmatch(release):
        raise HarnessError(f"{release!r} does not look like a kernel release")
    return release


# --------------------------------------------------------------------------------------------
# apt sources of this machine


def debian_mirrors() -> dict[str, str]:
    """``{"main": URI, "security": URI}`` from this machine's apt sources (one-line and deb822).

    Only Debian archives serving bookworm count; defaults are deb.debian.org.
    """
    found: dict[str, str] = {}
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        entries: list[tuple[list[str], list[str]]] = []  # (uris, suites)
        if f.suffix == ".sources":
            for para in re.split(r"\n\s*\n", text):
                fields = {}
                for line in para.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.split()
                if "deb" in fields.get("types", []):
                    entries.append((fields.get("uris", []), fields.get("suites", [])))
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    entries.append(([m.group(1)], [m.group(2)]))
        for uris, suites in entries:
            for uri in uris:
                if not re.match(r"^https?://", uri):
                    continue
                for suite in suites:
                    if suite == SUITE:
                        found.setdefault("main", uri.rstrip("/"))
                    elif suite == f"{SUITE}-security":
                        found.setdefault("security", uri.rstrip("/"))
    found.setdefault("main", "http://deb.debian.org/debian")
    found.setdefault("security", "http://deb.debian.org/debian-security")
    return found


def _sources_list(mirrors: dict[str, str]) -> str:
    return (f"deb {mirrors['main']} {SUITE} main\n"
            f"deb {mirrors['main']} {SUITE}-updates main\n"
            f"deb {mirrors['security']} {SUITE}-security main\n")


# --------------------------------------------------------------------------------------------
# the compile root


def root_dir(release: str) -> Path:
    return STAP_CACHE / f"root-{_check_release(release)}"


def _chroot(root: Path, argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C",
           "DEBIAN_FRONTEND": "noninteractive", "TMPDIR": "/tmp"}
    return harness._run(["chroot", str(root), *argv], env=env, **kw)


def _stamps(root: Path) -> dict:
    try:
        return json.loads((root / _ROOT_STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _stamp(root: Path, step: str, **info) -> None:
    data = _stamps(root)
    data[step] = {"done": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    (root / _ROOT_STAMP).write_text(json.dumps(data, indent=2) + "\n")


def _debootstrap(root: Path, mirrors: dict[str, str]) -> dict:
    if not shutil.which("debootstrap"):
        if os.geteuid() != 0:
            raise HarnessError("debootstrap is missing; install it as root (apt-get install debootstrap)")
        harness._run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
                     env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    debs = STAP_CACHE / "debootstrap-debs"  # reused by a rebuild
    debs.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    log(f"debootstrap --variant=minbase {SUITE} {tmp} {mirrors['main']}")
    harness._run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", SUITE, str(tmp),
                  mirrors["main"]])
    tmp.rename(root)
    return {"seconds": round(time.monotonic() - t, 1)}


def _install(root: Path, release: str, mirrors: dict[str, str]) -> dict:
    (root / "etc/apt/sources.list").write_text(_sources_list(mirrors))
    t = time.monotonic()
    _chroot(root, ["apt-get", "update", "-q"])
    pkgs = [*ROOT_PACKAGES, f"linux-headers-{release}"]
    log(f"apt-get install {' '.join(pkgs)} (in {root})")
    r = _chroot(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs])
    fetched = re.search(r"^Fetched (.*)$", r.stdout, re.MULTILINE)
    _chroot(root, ["apt-get", "clean"])
    return {"packages": pkgs, "seconds": round(time.monotonic() - t, 1),
            "fetched": fetched.group(1) if fetched else None}


def patch_runtime(root: Path, release: str) -> dict:
    """Rename ``task_work_cancel`` to ``task_work_cancel_func`` in the root's stap runtime when
    the kernel headers have the latter (6.1.9x backported the 6.11 rename; SystemTap 4.8
    predates it and then fails to build its runtime). Idempotent; the host's runtime is never
    touched."""
    src = root / "usr/share/systemtap/runtime/stp_task_work.c"
    header = None
    for h in (root / "usr/src").glob("linux-headers-*/include/linux/task_work.h"):
        header = h
        break
    if header is None or "task_work_cancel_func" not in header.read_text():
        return {"patched": False, "why": "headers have no task_work_cancel_func"}
    text = src.read_text()
    if "task_work_cancel_func" in text:
        return {"patched": True, "already": True}
    new = re.sub(r"\btask_work_cancel\b", "task_work_cancel_func", text)
    src.write_text(new)
    return {"patched": True, "file": str(src.relative_to(root)),
            "replacements": len(re.findall(r"\btask_work_cancel\b", text))}


def fetch_dbg(release: str) -> Path:
    """``linux-image-<release>-dbg`` downloaded once into ``cache/stap/debs``."""
    package = f"linux-image-{_check_release(release)}-dbg"
    d = STAP_CACHE / "debs"
    d.mkdir(parents=True, exist_ok=True)
    debs = sorted(d.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    t = time.monotonic()
    log(f"apt-get download {package} (about 860 MB for 6.1)")
    harness._run(["apt-get", "download", package], cwd=d)
    debs = sorted(d.glob(f"{package}_*.deb"))
    if not debs:
        raise HarnessError(f"apt-get download {package} produced no .deb in {d}")
    secs = time.monotonic() - t
    log(f"downloaded {debs[-1].name} ({debs[-1].stat().st_size >> 20} MiB) in {secs:.1f}s")
    (d / f"{debs[-1].name}.download.json").write_text(json.dumps(
        {"bytes": debs[-1].stat().st_size, "seconds": round(secs, 1)}) + "\n")
    return debs[-1]


def _unpack_dbg(root: Path, deb: Path, members: list[str]) -> None:
    """Extract ``members`` of a -dbg package into ``root`` (tar reads the whole package)."""
    # dpkg-deb | tar: only these members; --keep-directory-symlink keeps the root's usr-merge links
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root), *members],
                             stdin=dpkg.stdout, capture_output=True, text=True, check=False)
    finally:
        dpkg.stdout.close()
        dpkg.wait()
    if tar.returncode != 0 or dpkg.returncode != 0:
        raise HarnessError(f"unpacking {deb.name} failed: {tar.stderr[-2000:]}")


def _link_system_map(root: Path, release: str) -> None:
    """stap reads the kernel's function list from ``<build tree>/System.map``; Debian's
    headers have none and its /boot/System.map is a one-line placeholder ("The real System.map
    is in the linux-image-<version>-dbg package"), so link the -dbg one there."""
    link = root / "usr/src" / f"linux-headers-{release}" / "System.map"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/usr/lib/debug/boot/System.map-{release}")


def _install_vmlinux(root: Path, release: str) -> dict:
    deb = fetch_dbg(release)
    members = [f"./usr/lib/debug/boot/vmlinux-{release}", f"./usr/lib/debug/boot/System.map-{release}",
               f"./usr/lib/debug/lib/modules/{release}/vmlinux", f"./usr/lib/debug/vmlinux-{release}"]
    t = time.monotonic()
    log(f"unpacking the debug vmlinux and System.map from {deb.name} (reads the whole package, about a minute)")
    _unpack_dbg(root, deb, members)
    _link_system_map(root, release)
    vmlinux = root / members[0]
    info = {"deb": deb.name, "deb_bytes": deb.stat().st_size, "vmlinux_bytes": vmlinux.stat().st_size,
            "seconds": round(time.monotonic() - t, 1)}
    dl = deb.parent / f"{deb.name}.download.json"
    if dl.exists():
        info["download"] = json.loads(dl.read_text())
    if os.environ.get("SLABKIT_STAP_KEEP_DEB", "1") == "0":
        deb.unlink()
    return info


def build_root(release: str) -> Path:
    """The compile root for kernel ``release`` (built once; steps stamped in the root)."""
    _check_release(release)
    if os.geteuid() != 0:
        raise HarnessError("building the stap compile root needs root (debootstrap, chroot)")
    root = root_dir(release)
    with harness.cache_lock("stap-root"):
        STAP_CACHE.mkdir(parents=True, exist_ok=True)
        mirrors = debian_mirrors()
        if not (root / _ROOT_STAMP).exists():
            info = _debootstrap(root, mirrors)
            _stamp(root, "debootstrap", mirror=mirrors["main"], **info)
        done = _stamps(root)
        if "install" not in done:
            _stamp(root, "install", **_install(root, release, mirrors))
        if "patch" not in done:
            _stamp(root, "patch", **patch_runtime(root, release))
        if "vmlinux" not in done:
            _stamp(root, "vmlinux", **_install_vmlinux(root, release))
        elif not (root / f"usr/lib/debug/boot/System.map-{release}").exists():  # roots built before
            t = time.monotonic()
            _unpack_dbg(root, fetch_dbg(release), [f"./usr/lib/debug/boot/System.map-{release}"])
            _link_system_map(root, release)
            _stamp(root, "system_map", seconds=round(time.monotonic() - t, 1))
    return root


def root_info(release: str) -> dict:
    """What :func:`build_root` recorded (steps, seconds, sizes)."""
    return _stamps(root_dir(release))


def slabkit_env(root: Path) -> dict[str, str]:
    """The environment that makes slabkit's stap backend compile in ``root``."""
    return {"SLABKIT_STAP_ROOT": str(root)}


# --------------------------------------------------------------------------------------------
# the guest side: staprun + stapio in the initramfs


def _root_ldd(root: Path, binary: str) -> list[str]:
    return harness.parse_ldd(_chroot(root, ["ldd", binary]).stdout, f"{binary} in {root}")


def _inside(root: Path, path: str) -> Path:
    """``path`` of the root resolved inside it (symlinks followed within the root)."""
    p = root / path.lstrip("/")
    for _ in range(40):
        if not p.is_symlink():
            # resolve links of parent folders (usr-merge: /lib -> usr/lib) within the root too
            parent = p.parent
            real_parent = Path(os.path.realpath(parent))
            if not str(real_parent).startswith(str(root.resolve())):
                raise HarnessError(f"{path} leaves {root}")
            return real_parent / p.name
        target = os.readlink(p)
        p = (root / target.lstrip("/")) if target.startswith("/") else (p.parent / target)
    raise HarnessError(f"too many links resolving {path} in {root}")


def stap_overlay_plan(root: Path, kernel: Kernel, nic: str = "virtio-net-pci") -> dict[str, tuple]:
    """dest -> ('file', src, perm) for the root's staprun/stapio and the libraries they need
    that the harness's initramfs does not have already (it has the host's libc and friends)."""
    base, _ = harness._initramfs_plan(kernel, nic)
    plan: dict[str, tuple] = {}
    for binary in GUEST_STAP_BINARIES:
        plan[binary.lstrip("/")] = ("file", _inside(root, binary), 0o755)
        for lib in _root_ldd(root, binary):
            dest = lib.lstrip("/")
            if dest not in base:
                plan[dest] = ("file", _inside(root, lib), 0o755)
    return plan


def stap_initramfs(kernel: Kernel, root: Path, nic: str = "virtio-net-pci") -> Path:
    """The harness's initramfs for ``kernel`` with staprun/stapio appended (cached)."""
    base = harness.build_initramfs(kernel, nic)
    plan = stap_overlay_plan(root, kernel, nic)
    h = hashlib.sha256(base.name.encode())
    for dest in sorted(plan):
        st = plan[dest][1].stat()
        h.update(f"{dest}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE / "initramfs" / f"{base.stem}-stap-{h.hexdigest()[:12]}.cpio"
    with harness.cache_lock("initramfs"):
        if out.exists():
            return out
        for old in out.parent.glob(f"{kernel.release}-{nic}-*-stap-*.cpio"):
            old.unlink()
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            with open(base, "rb") as b:
                shutil.copyfileobj(b, f, 1 << 20)
            w = harness._Cpio(f)
            dirs = set()
            for dest in plan:
                parts = dest.split("/")[:-1]
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
            for d in sorted(dirs):
                w.directory(d)
            for dest in sorted(plan):
                w.file(dest, plan[dest][2], src=plan[dest][1])
            w.trailer()
        tmp.replace(out)
        log(f"built {out.name}: {base.name} + staprun, stapio ({len(plan)} files)")
    return out


def stap_guest(series: str = "6.1", **kw) -> tuple[harness.Guest, Path]:
    """A prepared (not yet booted) guest whose initramfs has staprun, and its compile root.

    ``with`` the guest to boot it; point slabkit at the root with :func:`slabkit_env`.
    """
    g = harness.Guest(series, **kw)
    g.prepare()
    t = time.monotonic()
    root = build_root(g.kernel.release)
    g.timings["stap_root_s"] = time.monotonic() - t
    t = time.monotonic()
    g.initramfs = stap_initramfs(g.kernel, root, g.nic)
    g.timings["stap_initramfs_s"] = time.monotonic() - t
    return g, root


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.kernels.stap_root",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("build", "env", "info"):
        p = sub.add_parser(name)
        p.add_argument("series", nargs="?", default="6.1")
    a = ap.parse_args(argv)
    harness.ensure_host_packages()
    kernel = harness.fetch_kernel(a.series)
    if a.cmd == "build":
        t = time.monotonic()
        root = build_root(kernel.release)
        print(f"{root} ({time.monotonic() - t:.1f}s)")
        print(json.dumps(root_info(kernel.release), indent=2))
    elif a.cmd == "env":
        print(" ".join(f"{k}={v}" for k, v in slabkit_env(root_dir(kernel.release)).items()))
    else:
        print(json.dumps(root_info(kernel.release), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
