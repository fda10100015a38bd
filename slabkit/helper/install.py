"""Install, update and remove slabkit's capture helper (run as root: ``sudo make system``).

What an install leaves on the machine, all root-owned and writable by root only::

    /usr/local/lib/slabkit/helper/slabkit/   a copy of slabkit's Python code (standard library
                                             only on the helper's path) and the slabcount binary
                                             built for it (slabcount/prebuilt/)
    /usr/local/libexec/slabkit-helper        the entry point: #!/usr/bin/python3 -I
    /etc/sudoers.d/slabkit                   members of group slabkit may run that one path as
                                             root, without a password, with sudo's environment
                                             reset (checked with visudo -cf before it is moved
                                             in place; mode 0440)
    group slabkit                            who may capture

Nothing a user can write is executed as root: the entry point, the code, the interpreter
(the system's ``/usr/bin/python3``, in isolated mode: no user site, no ``PYTHON*`` variables)
and every folder above them are checked to be root's and writable by no one else.
``uninstall`` removes all of it (and the group). Standard library only.
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

LIB = Path("/usr/local/lib/slabkit")
CODE = LIB / "helper"
ENTRY = Path("/usr/local/libexec/slabkit-helper")
SUDOERS = Path("/etc/sudoers.d/slabkit")
PYTHON = Path("/usr/bin/python3")
GROUP = "slabkit"
STATE = Path("/run/slabkit/helper")
#: what of the package the helper's copy holds
COPY_SUFFIXES = (".py", ".stp", ".c", ".h")

ENTRY_TEXT = f"""#!{PYTHON} -I
# slabkit's capture helper; installed by `slabkit helper install` (sudo make system).
# Run through sudo by members of group {GROUP}: see README.md, "Security".
import sys
sys.path.insert(0, {str(CODE)!r})
from slabkit.helper.server import main
sys.exit(main())
"""

SUDOERS_TEXT = f"""# slabkit: members of group {GROUP} may run slabkit's capture helper as root.
# Installed by `slabkit helper install`; removed by `slabkit helper uninstall`.
Defaults!{ENTRY} env_reset, !setenv, !use_pty
%{GROUP} ALL=(root) NOPASSWD: {ENTRY}
"""


def package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def say(lines: list[str], text: str) -> None:
    lines.append(text)


def root_owned_chain(path: Path) -> str | None:
    """Why ``path`` (resolved) or a folder above it is not root's alone, or None."""
    p = path.resolve()
    for q in [p, *p.parents]:
        st = os.stat(q)
        if st.st_uid != 0:
            return f"{q} belongs to uid {st.st_uid}, not root"
        if st.st_mode & stat.S_IWOTH and not (st.st_mode & stat.S_ISVTX):
            return f"{q} is writable by everyone"
        if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
            return f"{q} is writable by group {st.st_gid}"
    return None


def _sources() -> list[tuple[Path, Path]]:
    """(source file, path relative to the package) of what the helper's copy holds."""
    src = package_dir()
    out = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        if "notebooks" in rel.parts or "prebuilt" in rel.parts or "samples" in rel.parts:
            continue
        if path.is_file() and path.suffix in COPY_SUFFIXES:
            out.append((path, rel))
    return out


def source_digest() -> str:
    """A digest of the code the helper would be installed from, and of its entry point and
    sudoers text: an install that would change nothing is skipped."""
    import hashlib
    h = hashlib.sha256(ENTRY_TEXT.encode() + SUDOERS_TEXT.encode())
    for path, rel in _sources():
        h.update(str(rel).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _copy_code(dest: Path) -> None:
    for path, rel in _sources():
        target = dest / "slabkit" / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(path, target)
        os.chmod(target, 0o644)


def _build_slabcount(dest: Path) -> str:
    """Build slabcount from the copied sources and keep it beside them (what the bpf backend
    uses, :func:`slabkit.slabcount.build.build`), or say why not. It runs in a process of its
    own, importing the copy (this process keeps the slabkit it was started with)."""
    code = ("import shutil, sys; sys.path.insert(0, sys.argv[1]); "
            "from slabkit.slabcount import build; "
            "binary, prebuilt = build.build(), build.prebuilt_path(); "
            "prebuilt.parent.mkdir(parents=True, exist_ok=True); "
            "shutil.copyfile(binary, prebuilt); prebuilt.chmod(0o755); print(prebuilt.parent.name)")
    done = subprocess.run([str(PYTHON), "-I", "-c", code, str(dest)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"slabcount not built ({why}); the bpf backend will be unavailable to users"
    return f"slabcount built for it ({done.stdout.strip()})"


def install(add_user: str | None = None) -> list[str]:
    """Install or update the helper; returns what was done, a line each."""
    done: list[str] = []
    if os.geteuid() != 0:
        raise SystemExit("slabkit helper install: run it as root (sudo make system)")
    why = root_owned_chain(PYTHON)
    if why:
        raise SystemExit(f"slabkit helper install: the interpreter is not safe to run as root: "
                         f"{why}")
    if not shutil.which("sudo") or not shutil.which("visudo"):
        raise SystemExit("slabkit helper install: sudo is not installed (apt-get install sudo)")
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
        say(done, f"created group {GROUP}")
    digest = source_digest()
    stamp = CODE / ".source-digest"
    current = (stamp.is_file() and stamp.read_text() == digest and ENTRY.is_file()
               and SUDOERS.is_file() and not root_owned_chain(ENTRY))
    if current:
        if add_user:
            _add_user(add_user, done)
        return done
    LIB.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(LIB, 0o755)
    staging = LIB / "helper.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    _copy_code(staging)
    say(done, _build_slabcount(staging))
    (staging / ".source-digest").write_text(digest)
    for d, _, files in os.walk(staging):
        os.chown(d, 0, 0)
        os.chmod(d, 0o755)
        for f in files:
            os.chown(os.path.join(d, f), 0, 0)
    old = LIB / "helper.old"
    shutil.rmtree(old, ignore_errors=True)
    if CODE.exists():
        os.rename(CODE, old)
    os.rename(staging, CODE)
    shutil.rmtree(old, ignore_errors=True)
    say(done, f"installed the helper's code in {CODE}")
    ENTRY.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = ENTRY.with_name(".slabkit-helper.tmp")
    tmp.write_text(ENTRY_TEXT)
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o755)
    os.replace(tmp, ENTRY)
    say(done, f"installed {ENTRY}")
    tmp = SUDOERS.with_name(".slabkit.tmp")      # sudo ignores names with a dot
    tmp.write_text(SUDOERS_TEXT)
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o440)
    check = subprocess.run(["visudo", "-cf", str(tmp)], capture_output=True, text=True)
    if check.returncode != 0:
        tmp.unlink()
        raise SystemExit(f"slabkit helper install: visudo refused the sudoers file: "
                         f"{check.stdout}{check.stderr}")
    os.replace(tmp, SUDOERS)
    say(done, f"installed {SUDOERS} (visudo -c: ok)")
    for path in (ENTRY, CODE / "slabkit" / "helper" / "server.py", SUDOERS):
        why = root_owned_chain(path)
        if why:
            raise SystemExit(f"slabkit helper install: {path} is not root's alone: {why}")
    if add_user:
        _add_user(add_user, done)
    else:
        say(done, f"to let a user capture: sudo usermod -aG {GROUP} NAME (then log in again)")
    return done


def _add_user(user: str, done: list[str]) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"slabkit helper install: there is no user {user!r}") from None
    if user in grp.getgrnam(GROUP).gr_mem:
        return
    subprocess.run(["usermod", "-aG", GROUP, user], check=True)
    say(done, f"added {user} to group {GROUP} (takes effect at their next login)")


def uninstall() -> list[str]:
    """Remove every trace of the helper: sudoers file, entry point, code, state, group."""
    if os.geteuid() != 0:
        raise SystemExit("slabkit helper uninstall: run it as root")
    done: list[str] = []
    for path in (SUDOERS, ENTRY):
        if path.exists():
            path.unlink()
            say(done, f"removed {path}")
    for path in (CODE, LIB / "helper.new", LIB / "helper.old", STATE):
        if path.exists():
            shutil.rmtree(path)
            say(done, f"removed {path}")
    if LIB.exists() and not any(LIB.iterdir()):
        LIB.rmdir()
    try:
        grp.getgrnam(GROUP)
        subprocess.run(["groupdel", GROUP], check=True)
        say(done, f"removed group {GROUP}")
    except KeyError:
        pass
    return done


def status() -> dict:
    installed = ENTRY.exists()
    try:
        members = grp.getgrnam(GROUP).gr_mem
    except KeyError:
        members = None
    return {"installed": installed, "entry": str(ENTRY), "code": str(CODE),
            "sudoers": SUDOERS.exists(), "group": GROUP, "members": members,
            "unsafe": (root_owned_chain(ENTRY) if installed else None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slabkit helper",
                                     description="slabkit's capture helper for normal users")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("install", help="install or update it (root)")
    p.add_argument("--add-user", default=None, metavar="NAME",
                   help="also add this user to the slabkit group")
    sub.add_parser("uninstall", help="remove every trace of it (root)")
    sub.add_parser("status", help="is it installed, who may use it")
    args = parser.parse_args(argv)
    if args.what == "install":
        done = install(args.add_user)
        if done:
            print("\n".join(done))
    elif args.what == "uninstall":
        print("\n".join(uninstall()) or "nothing to remove")
    else:
        import json
        print(json.dumps(status(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
