"""Root never writes (or reads) through another user's symlinks (issue 18, item 1).

As root, in a tree a throwaway user owns (``tests/users.py``), as ``sudo make demo`` in a user's
checkout does: an empty ``-o DIR`` of the user is refused; symlinks the user planted under
every name a capture writes, at the capture folder's own name, at the base folder or a folder
above it, never make root write outside (a root-only canary stays unchanged) and the capture
ends up the user's; a user's link into their own folder is followed; rebuilding or showing a
user's capture never reads what their symlinks point to.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import skip_or_fail, SAMPLES, require_bpf, require_tool
from users import as_user, home, throwaway_user

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.live

#: every name a bpf capture writes in its folder (raw output, records, tables, temporaries)
WRITTEN = ["meta.running.json", ".meta.running.json.tmp", "meta.json", ".meta.json.tmp",
           "slabcount.tsv", "slabcount.stderr", "kallsyms.txt.gz", ".kallsyms.txt.gz.tmp",
           *[n for t in ("allocs", "frames", "slabinfo", "outstanding")
             for n in (f"{t}.parquet", f".{t}.parquet.tmp")]]


@pytest.fixture
def user(live):
    if os.geteuid() != 0:
        skip_or_fail("needs root: to create a throwaway user and capture")
    for tool in ("useradd", "runuser"):
        require_tool(tool)
    require_bpf()
    with throwaway_user() as name:
        yield name


@pytest.fixture
def canary(tmp_path):
    """A root-only folder holding a root-only file: what the planted symlinks point at."""
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    f = secret / "canary"
    f.write_text(f"root only {secrets.token_hex(8)}\n")
    f.chmod(0o600)
    return f


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: content (files), mode, owner, mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (p.read_bytes() if p.is_file() else None,
                                           st.st_mode, st.st_uid, st.st_mtime_ns)
    return out


def slabkit_as_root(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SLABKIT_CAPTURE_DIR", None)
    return subprocess.run([sys.executable, "-m", "slabkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def as_the_user(user: str, script: str) -> None:
    res = as_user(user, ["sh", "-e"], input=script)
    assert res.returncode == 0, res.stderr


def assert_one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def saved_in(res: subprocess.CompletedProcess) -> Path:
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.splitlines()[0].rsplit("saved in ", 1)[1])


def test_an_empty_folder_of_another_user_is_refused_in_one_line(user):
    target = home(user) / "empty"
    as_the_user(user, f"mkdir {shlex.quote(str(target))}")
    res = slabkit_as_root("capture", "filp", "-d", "1", "--quiet", "-o", str(target),
                          cwd=home(user))
    assert_one_line_error(res, "belongs to user", user)
    assert os.listdir(target) == []


def test_symlinks_planted_where_a_capture_writes_never_redirect_it(user, canary):
    """``sudo make demo`` in a user's checkout: the base folder is the user's, who plants,
    for every second of the next two minutes, a folder at the capture folder's name holding a
    symlink to the canary under every name a capture writes, and symlinks at the next two
    names (to the root-only folder, and to the canary itself)."""
    base = home(user) / "data" / "captures"
    host = socket.gethostname()
    now = time.time()
    lines = [f"mkdir -p {shlex.quote(str(base))}", f"cd {shlex.quote(str(base))}"]
    for s in range(-2, 120):
        stamp = datetime.fromtimestamp(now + s).strftime("%Y%m%d-%H%M%S")
        name = f"filp-{stamp}-{host}"
        lines.append(f"mkdir {name}")
        lines += [f"ln -s {canary} {name}/{w}" for w in WRITTEN]
        lines += [f"ln -s {canary.parent} {name}-1", f"ln -s {canary} {name}-2"]
    as_the_user(user, "\n".join(lines))
    before, planted = snapshot(canary.parent), snapshot(base)

    res = slabkit_as_root("capture", "filp", "-d", "1", "--quiet", cwd=home(user))
    folder = saved_in(res)

    assert snapshot(canary.parent) == before              # nothing written through a link
    assert folder.parent == base and folder.name.endswith("-3"), folder  # planted names skipped
    after = snapshot(base)
    assert {k: v for k, v in after.items() if k in planted} == planted
    uid = os.stat(home(user)).st_uid
    st = folder.lstat()
    assert st.st_uid == uid and not folder.is_symlink()
    for p in folder.iterdir():
        assert not p.is_symlink() and p.lstat().st_uid == uid, p
    assert {"meta.json", "slabcount.tsv", "allocs.parquet"} <= {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("where", ["the base folder", "a folder above it"])
def test_a_users_symlink_to_a_folder_not_theirs_is_refused(user, canary, where):
    """``~/data/captures -> /root-only`` or ``~/data -> /root-only``: root would create
    folders (or the capture) in the root-only folder."""
    secret = canary.parent
    h = home(user)
    if where == "the base folder":
        as_the_user(user, f"mkdir {h}/data && ln -s {secret} {h}/data/captures")
    else:
        as_the_user(user, f"ln -s {secret} {h}/data")
    before = snapshot(secret)
    res = slabkit_as_root("capture", "filp", "-d", "1", "--quiet", cwd=h)
    assert_one_line_error(res, "symbolic link", user)
    assert snapshot(secret) == before


def test_a_users_symlink_into_their_own_folder_is_followed(user):
    h = home(user)
    as_the_user(user, f"mkdir {h}/elsewhere && ln -s {h}/elsewhere {h}/data")
    folder = saved_in(slabkit_as_root("capture", "filp", "-d", "1", "--quiet", cwd=h))
    real = folder.resolve()
    assert real.parent == h / "elsewhere" / "captures"
    uid = os.stat(h).st_uid
    assert real.stat().st_uid == uid and (h / "elsewhere" / "captures").stat().st_uid == uid


def _users_capture(user: str) -> Path:
    """A copy of a sample capture in the user's home, theirs."""
    folder = home(user) / "cap"
    shutil.copytree(SAMPLES / "bpftrace-filp", folder)
    subprocess.run(["chown", "-R", f"{user}:", str(folder)], check=True)
    return folder


def test_rebuilding_a_users_capture_as_root_is_refused_and_reads_nothing(user, canary):
    """The raw output replaced by a symlink to a root-only file: its content must not reach
    an error message or a table."""
    canary.write_text('{"type": "map", "data": {"@c": {"1,1,1,' + canary.read_text().strip()
                      + '": 5}}} not json\n')
    secret = canary.read_text().split("root only ")[1][:16]
    folder = _users_capture(user)
    as_the_user(user, f"cd {folder} && rm bpftrace.jsonl && ln -s {canary} bpftrace.jsonl")
    res = slabkit_as_root("show", "--reparse", str(folder), cwd=home(user))
    assert_one_line_error(res, "belongs to user", f"slabkit show --reparse {folder}")
    assert secret not in res.stdout + res.stderr
    assert not any(secret.encode() in p.read_bytes() for p in folder.iterdir()
                   if p.is_file() and not p.is_symlink())


def test_showing_a_users_capture_as_root_never_reads_through_their_symlink(user, tmp_path):
    """meta.json replaced by a symlink to a root-only capture record whose host is secret."""
    import json
    secret = f"secret-{secrets.token_hex(6)}"
    record = tmp_path / "root-only.json"
    meta = json.loads((SAMPLES / "bpftrace-filp" / "meta.json").read_text())
    record.write_text(json.dumps(dict(meta, host=secret, cache=secret)))
    record.chmod(0o600)
    folder = _users_capture(user)
    as_the_user(user, f"cd {folder} && rm meta.json && ln -s {record} meta.json")
    res = slabkit_as_root("show", str(folder), cwd=home(user))
    assert_one_line_error(res, "symbolic link")
    assert secret not in res.stdout + res.stderr
