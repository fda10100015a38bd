"""The notebooks: shipped without outputs, parameterised, and executed headless (nbclient) on
the sample captures; notebook 01 also without root (it falls back to a sample) and, live, with a
real 2 s capture; the HTML report built from notebook 02.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from conftest import SAMPLES, require_tool

import slabkit
from slabkit.errors import CaptureNotFound, SlabkitError
from slabkit.ui import report

REPO = Path(__file__).resolve().parent.parent
NAMES = ["01-pick-and-capture.ipynb", "02-explore-a-capture.ipynb", "03-compare-captures.ipynb"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# every sample capture: saved folders, and raw tracer output
SAMPLE_PATHS = sorted(p.parent for p in SAMPLES.glob("*/meta.json")) + [
    SAMPLES / "stap-classic" / "raw.txt"]


@pytest.fixture(autouse=True)
def capture_dir(tmp_path, monkeypatch) -> Path:
    """Captures a notebook makes go to a temporary folder (the kernel inherits the variable)."""
    folder = tmp_path / "captures"
    monkeypatch.setenv("SLABKIT_CAPTURE_DIR", str(folder))
    return folder


def _run(name: str, params: dict | None, cwd: Path):
    return report.execute_notebook(report.notebook_path(name), params, cwd=cwd, timeout_s=240)


def _outputs(nb, kind: str | None = None):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind is None or out.get("output_type") == kind:
                yield out


def _text(nb) -> str:
    """Everything the notebook printed or showed as text."""
    parts = []
    for out in _outputs(nb):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
            parts.append(out["data"].get("text/html", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _widgets(nb) -> int:
    return sum(WIDGET_VIEW in o.get("data", {}) for o in _outputs(nb))


def _literals(source: str) -> dict:
    """``name = literal`` lines of a parameters cell, as papermill reads them; anything else
    in the cell fails the test."""
    values = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


# --------------------------------------------------------------------------------------------
# the files


def test_notebooks_are_shipped_and_linked_from_the_checkout():
    assert sorted(p.name for p in report.NOTEBOOK_DIR.glob("*.ipynb")) == NAMES
    assert report.NOTEBOOK_DIR.parent == Path(slabkit.__file__).resolve().parent  # package data
    for name in NAMES:
        assert (REPO / "notebooks" / name).samefile(report.notebook_path(name))
    with pytest.raises(SlabkitError, match="no notebook 'nope.ipynb'"):
        report.notebook_path("nope.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(report.notebook_path(name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.cells[0].cell_type == "markdown"        # each one says what it does first
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4


@pytest.mark.parametrize("name, names", [
    ("01-pick-and-capture.ipynb", {"cache", "seconds"}),
    ("02-explore-a-capture.ipynb", {"capture_path", "top_n", "interactive"}),
    ("03-compare-captures.ipynb", {"before_path", "after_path", "top_n"}),
])
def test_parameters_cell(name, names):
    nb = nbformat.read(report.notebook_path(name), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    scope = _literals(cells[0].source)                  # plain assignments of literals
    assert names <= set(scope)
    for key in ("capture_path", "before_path", "after_path"):
        if key in scope:                               # None: a sample capture shipped with
            assert scope[key] is None, scope[key]      # slabkit (read from the package)


def test_inject_parameters_after_the_parameters_cell():
    nb = nbformat.read(report.notebook_path(NAMES[1]), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    out = report.inject_parameters(nb, {"capture_path": "/x/y 'z'", "top_n": 3})
    cell = out.cells[at + 1]
    assert cell.metadata.tags == ["injected-parameters"]
    scope = _literals(cell.source)
    assert scope["capture_path"] == "/x/y 'z'" and scope["top_n"] == 3
    assert len(out.cells) == len(nb.cells) + 1
    again = report.inject_parameters(out, {"top_n": 5})  # replaces, as papermill does
    assert len(again.cells) == len(nb.cells) + 1 and "top_n = 5" in again.cells[at + 1].source
    assert len(nb.cells) == len(out.cells) - 1          # the original is not modified
    with pytest.raises(SlabkitError, match="identifier"):
        report.inject_parameters(nb, {"not a name": 1})


# --------------------------------------------------------------------------------------------
# executed headless on the samples


@pytest.mark.parametrize("sample", SAMPLE_PATHS, ids=lambda p: p.relative_to(SAMPLES).as_posix())
def test_02_explores_each_sample(sample, tmp_path):
    nb = _run(NAMES[1], {"capture_path": str(sample)}, tmp_path)
    cap = slabkit.load(sample)
    text = _text(nb)
    assert repr(cap) in text
    top = slabkit.by_process(cap).index[0]
    assert f">{top}<" in text                           # the by-process table
    # process, heatmap, call sites, flame; more for outstanding and slabinfo series
    assert _images(nb) >= 4 + (cap.outstanding is not None) + (cap.slabinfo is not None)
    if cap.outstanding is not None:
        total = int(cap.outstanding["count"].sum())
        assert f"{total:,} objects allocated during the capture were still allocated" in text
    else:
        assert "has no outstanding-objects table" in text
    if cap.slabinfo is None:
        assert "has no slabinfo series" in text
    assert _widgets(nb) == 1                            # the explorer (interactive=True)
    assert not list(tmp_path.glob("*.png"))             # nothing written next to it


def test_02_on_a_capture_that_saw_nothing(tmp_path):
    """An idle cache gives a capture with no allocations: every section still runs."""
    from slabkit.capturing import store
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    cap.allocs, cap.frames = cap.allocs.iloc[0:0], cap.frames.iloc[0:0]
    cap.meta["total_allocs"] = 0
    (tmp_path / "idle").mkdir()
    store.save(tmp_path / "idle", cap)
    nb = _run(NAMES[1], {"capture_path": str(tmp_path / "idle")}, tmp_path)
    text = _text(nb)
    assert "0 allocs" in text and "0 lines; the first ones" in text
    assert _images(nb) >= 4                             # each plot says it has nothing to show


def test_02_default_parameters_run_from_any_folder(tmp_path):
    """The default capture_path (None) is a sample shipped in the package: found from any
    working folder."""
    nb = _run(NAMES[1], None, tmp_path)
    assert repr(slabkit.load(SAMPLES / "bpftrace-filp-outstanding")) in _text(nb)


def test_03_compares_two_captures(tmp_path):
    nb = _run(NAMES[2], None, tmp_path)
    before = slabkit.load(SAMPLES / "bpftrace-filp")
    after = slabkit.load(SAMPLES / "bpftrace-filp-outstanding")
    d = slabkit.diff(before, after)
    text = _text(nb)
    assert f">{d.index[0]}<" in text and "delta_per_s" in text
    assert _images(nb) == 2                             # change per process, per call site


def _as_nobody(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is needed to run a notebook as nobody")
    return subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                          env=env, capture_output=True, text=True, check=False, **kw)


def _python_for_nobody(env: dict) -> str:
    """An interpreter the user nobody can run with slabkit's packages: this one, or (where
    this one lives under /root, as pyenv's do) the system's python of the same version, given
    this environment's site-packages on PYTHONPATH (the same ABI, so the same wheels work)."""
    import site
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        # it must also start itself again, as the kernel does (a venv interpreter under /root
        # was seen to start under setpriv yet fail to start its own kernel)
        check = ("import slabkit.ui.report, ipykernel, nbclient, subprocess, sys; "
                 "subprocess.run([sys.executable, '-c', ''], check=True)")
        probe = _as_nobody([exe, "-c", check], env, timeout=120)
        if probe.returncode == 0:
            return exe
    pytest.skip(f"no Python {version} with slabkit's packages that the user nobody can run")


def _run_as_nobody(name: str, params: dict, shared: Path) -> subprocess.CompletedProcess:
    """Execute a notebook in a process (and so a kernel) of the user nobody; the executed
    notebook is written to ``shared/out.ipynb``."""
    home = shared / "home"
    home.mkdir()
    for path in (shared, home):
        os.chmod(path, 0o777)
    script = (
        "import nbformat\n"
        "from slabkit.ui.report import execute_notebook, notebook_path\n"
        f"nb = execute_notebook(notebook_path({name!r}), {params!r}, cwd={str(shared)!r})\n"
        f"nbformat.write(nb, {str(shared / 'out.ipynb')!r})\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
           "SLABKIT_CAPTURE_DIR": str(shared / "captures"), "MPLCONFIGDIR": str(home / "mpl")}
    if os.geteuid() != 0:       # already not root: run it as we are
        return subprocess.run([sys.executable, "-c", script], env=env, cwd=shared,
                              capture_output=True, text=True, timeout=300, check=False)
    exe = _python_for_nobody(env)
    return _as_nobody([exe, "-c", script], env, cwd=shared, timeout=300)


def test_01_without_root_uses_a_sample():
    """Not root: no cache table, no capture; the notebook says why and loads a sample."""
    shared = Path(tempfile.mkdtemp(prefix="slabkit-nobody-"))
    try:
        done = _run_as_nobody(NAMES[0], {"seconds": 1}, shared)
        assert done.returncode == 0, done.stderr[-3000:]
        nb = nbformat.read(shared / "out.ipynb", as_version=4)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    text = _text(nb)
    assert "No live capture on this machine" in text and "needs root" in text
    assert "The cache table needs root" in text
    assert "loaded the sample capture" in text and "bpftrace-filp" in text
    assert _widgets(nb) == 3                            # picker, runner, explorer
    assert not (shared / "captures").exists()


# --------------------------------------------------------------------------------------------
# live: a real capture from notebook 01


@pytest.mark.live
def test_01_captures_live(live, tmp_path, capture_dir):
    require_tool("bpftrace")
    nb = _run(NAMES[0], {"seconds": 2}, tmp_path)
    text = _text(nb)
    assert "Capturing works here: 'filp' would be traced with" in text
    folders = [p.parent for p in capture_dir.glob("*/meta.json")]
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["cache"] == "filp" and meta["status"] == "complete"
    assert 1.5 < meta["duration_s"] < 10
    assert f"captured {meta['total_allocs']:,} allocations from 'filp'" in text
    assert _widgets(nb) == 3


# --------------------------------------------------------------------------------------------
# the HTML report


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html                        # nothing to run, nothing to fetch
    for tag in re.findall(r"<(?:link|img|iframe)\b[^>]*>", html):
        assert "http:" not in tag and "https:" not in tag, tag
    assert "@import" not in html


@pytest.mark.parametrize("sample, show_code", [
    (SAMPLES / "bpftrace-filp-outstanding", False),
    (SAMPLES / "stap-classic" / "raw.txt", True),
])
def test_report_is_one_self_contained_page(sample, show_code, tmp_path):
    out = report.write_report(sample, tmp_path / "sub" / "report.html", show_code=show_code)
    assert out == tmp_path / "sub" / "report.html"
    html = out.read_text()
    _assert_self_contained(html)
    cap = slabkit.load(sample)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) >= 4
    assert f"<title>slabkit report: {cap.cache}</title>" in html
    assert str(Path(sample).resolve()) in html           # the header names the capture
    assert f">{slabkit.by_process(cap).index[0]}<" in html
    assert "Who allocates: by process" in html           # the markdown explains each step
    assert ('class="highlight hl-ipython3"' in html) == show_code   # code only if asked
    assert "the interactive explorer appears when this notebook runs" in html
    assert WIDGET_VIEW not in html


def test_report_of_a_missing_capture_fails_before_starting_a_kernel(tmp_path):
    with pytest.raises(CaptureNotFound, match="does not exist"):
        report.write_report(tmp_path / "nothing", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_error_names_the_failing_cell(tmp_path):
    bad = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3",
                                                            "language": "python"}})
    params = nbformat.v4.new_code_cell("capture_path = None")
    params.metadata["tags"] = ["parameters"]
    bad.cells = [params, nbformat.v4.new_code_cell("x = 1"),
                 nbformat.v4.new_code_cell("# divide\nratio = len(capture_path) / 0")]
    path = tmp_path / "bad.ipynb"
    nbformat.write(bad, path)
    with pytest.raises(SlabkitError) as info:
        report.write_report(SAMPLES / "bpftrace-filp", tmp_path / "r.html", notebook=path)
    msg = str(info.value)
    assert "bad.ipynb" in msg and "ZeroDivisionError: division by zero" in msg
    assert "'# divide'" in msg                           # which cell
    assert "\x1b[" not in msg                            # no terminal colour codes
    assert not (tmp_path / "r.html").exists()


def test_cli_report(tmp_path, monkeypatch, capsys):
    from slabkit.ui.cli import main
    calls = []

    def fake(capture, out, *, show_code=False):
        calls.append((capture, out, show_code))
        return Path(out)

    monkeypatch.setattr(report, "write_report", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(SAMPLES / "bpftrace-filp"), "-o", "r.html"]) == 0
    assert main(["report", str(SAMPLES / "bpftrace-filp"), "--show-code"]) == 0
    assert calls == [(str(SAMPLES / "bpftrace-filp"), "r.html", False),
                     (str(SAMPLES / "bpftrace-filp"), "bpftrace-filp.html", True)]
    assert "report: r.html" in capsys.readouterr().out
    monkeypatch.undo()
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
