"""The installed package works on its own: a wheel built from this checkout, installed with pip
into a fresh virtualenv outside it, run by a throwaway unprivileged user with the checkout
hidden (an empty tmpfs over it, in a private mount namespace). ``slabkit demo`` (no root: it
shows a shipped sample capture and writes its report) and the three notebooks, executed
headless with nbclient, must find everything they need (sample captures, notebooks) inside
the installed package.

pip installs the wheel's declared dependencies, pinned to the versions this environment has
(so a missing dependency in pyproject.toml fails here, and the download cache is warm).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nbformat
import pytest
from conftest import skip_or_fail
from slabkit.slabcount.build import SOURCES as SLABCOUNT_SOURCES

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["01-pick-and-capture.ipynb", "02-explore-a-capture.ipynb",
             "03-compare-captures.ipynb"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _processes_of(uid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == uid:
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def user():
    """A throwaway system user with a home in a fresh folder (mode 755) outside the checkout;
    its processes ended and the user, its group and the folder removed afterwards, even when
    the test fails."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to create a throwaway user (useradd)")
    base = Path(tempfile.mkdtemp(prefix="slabkit-installed-"))
    base.chmod(0o755)
    name = f"slabkit-t{os.getpid()}"
    home = base / "home"
    try:
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
              str(home), "--shell", "/usr/sbin/nologin", name])
        entry = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield name, entry.pw_uid, base, home
    finally:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            uid = None
        if uid is not None:
            for pid in _processes_of(uid):       # only this user's, which the test started
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _python_for(user_name: str) -> str:
    """An interpreter of this Python's minor version that the user can run (this one, or the
    system's where this one lives under /root, as pyenv's does)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (getattr(sys, "_base_executable", sys.executable), f"/usr/bin/{version}",
                f"/usr/local/bin/{version}"):
        if Path(exe).exists() and subprocess.run(
                ["runuser", "-u", user_name, "--", exe, "-c", ""], capture_output=True,
                check=False).returncode == 0:
            return exe
    skip_or_fail(f"no {version} that an unprivileged user can run")
    return ""


def _build_wheel(out: Path) -> Path:
    """A wheel built from a copy of this checkout's package (the build leaves files behind)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "slabkit", src / "slabkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "dist"),
          str(src)], timeout=300)
    wheel, = (out / "dist").glob("slabkit-*.whl")
    shutil.rmtree(src)
    return wheel


def _pins(path: Path) -> Path:
    """This environment's versions of everything but slabkit, as a pip constraints file."""
    done = _run([sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable"])
    path.write_text("".join(line + "\n" for line in done.stdout.splitlines()
                            if line and not line.lower().startswith("slabkit")))
    return path


NOTEBOOK_SCRIPT = """
import json, sys
import nbformat
import slabkit
from slabkit.ui.report import NOTEBOOK_DIR, execute_notebook, notebook_path
params = {"01-pick-and-capture.ipynb": {"seconds": 1}}
for name in sys.argv[1:]:
    nb = execute_notebook(notebook_path(name), params.get(name), cwd=".")
    nbformat.write(nb, "executed-" + name)
print(json.dumps({"slabkit": slabkit.__file__, "notebooks": str(NOTEBOOK_DIR),
                  "sample": str(slabkit.sample_path("bpftrace-filp"))}))
"""


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
                parts.append(out["data"].get("text/html", ""))
    return "\n".join(parts)


def test_wheel_installed_without_the_checkout_runs_demo_and_notebooks_unprivileged(user):
    name, uid, base, home = user
    wheel = _build_wheel(base)
    files = set(zipfile.ZipFile(wheel).namelist())
    for needed in ["slabkit/samples/bpftrace-filp/meta.json",
                   "slabkit/samples/stap-classic/raw.txt",
                   *(f"slabkit/notebooks/{n}" for n in NOTEBOOKS),
                   "slabkit/analysis/pprof/profile.proto", "slabkit/analysis/pprof/LICENSE",
                   "slabkit/ui/report.html.j2", "slabkit/ui/flame/flame.js",
                   # everything slabcount is built from (an installed slabkit builds it)
                   *(f"slabkit/slabcount/{n}" for n in SLABCOUNT_SOURCES)]:
        assert needed in files, needed

    venv = base / "venv"
    _run([_python_for(name), "-m", "venv", str(venv)], timeout=120)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
          str(_pins(base / "pins.txt")), str(wheel)], timeout=600)
    # as the user, with the checkout hidden under an empty read-only tmpfs (a private mount
    # namespace: gone with the process), and nothing in the environment pointing at it
    as_user = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"', str(REPO),
               "runuser", "-u", name, "--", "env", "-i", f"PATH={venv / 'bin'}:/usr/bin:/bin",
               f"HOME={home}", "LANG=C.UTF-8", f"SLABKIT_CAPTURE_DIR={home / 'captures'}"]
    hidden = subprocess.run([*as_user, "ls", "-A", str(REPO)], capture_output=True, text=True,
                            check=False)
    assert hidden.returncode == 0 and hidden.stdout == "", hidden.stderr

    demo = subprocess.run([*as_user, str(venv / "bin" / "slabkit"), "demo"], cwd=home,
                          capture_output=True, text=True, timeout=300, check=False)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "needs root" in out and "showing a sample capture" in out
    assert "filp:" in out and "bpftrace-filp" in out
    report = home / "reports" / "bpftrace-filp.html"      # beside $SLABKIT_CAPTURE_DIR
    assert f"report: {report}" in out and report.is_file()
    html = report.read_text()
    assert html.count('src="data:image/png;base64,') >= 4
    assert str(venv) in html and str(REPO) not in html     # the installed notebook and sample

    (home / "run.py").write_text(NOTEBOOK_SCRIPT)
    nbs = subprocess.run([*as_user, str(venv / "bin" / "python"), "run.py", *NOTEBOOKS],
                         cwd=home, capture_output=True, text=True, timeout=300, check=False)
    assert nbs.returncode == 0, nbs.stderr[-3000:]
    where = json.loads(nbs.stdout.splitlines()[-1])
    for key in ("slabkit", "notebooks", "sample"):
        assert where[key].startswith(str(venv)), where
    texts = {n: _text(nbformat.read(home / f"executed-{n}", as_version=4)) for n in NOTEBOOKS}
    assert "No capture can run on this machine" in texts[NOTEBOOKS[0]]
    assert "Not capturing here" in texts[NOTEBOOKS[0]]
    for name in NOTEBOOKS:                   # each shows a sample, and says so
        assert "sample, recorded on vm" in texts[name], name
    assert "filp</b>: 33,144 allocations" in texts[NOTEBOOKS[1]]
    assert "change per second" in texts[NOTEBOOKS[2]]
    assert not (home / "captures").exists()                # nothing captured without root
