"""JupyterLab in headless Chromium, driven with Playwright: notebook 01 runs, its widgets render
and a capture starts from them; a report opens with its plots showing.

JupyterLab runs on 127.0.0.1 at a free port with a random token, on a temporary copy of
``notebooks/``, with its own settings, workspaces and runtime folders; it is started in a new
session and killed by its process group at the end, its kernels (which jupyter_client starts
in sessions of their own) by their pids. Screenshots go to the test's temporary folder and the
latest ones are copied to ``build/screenshots/`` for people to look at.

Needs Debian's ``chromium`` (``.ci/install-system`` installs it; Playwright's own browser
download is not used) and the ``playwright`` Python package.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import procs
import pytest
from conftest import SAMPLES, skip_or_fail
from users import popen_as_user, python, throwaway_user

import slabkit
from slabkit.ui import report

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "build" / "screenshots"
ERROR_MIME = "application/vnd.jupyter.error"


def _keep(path: Path) -> None:
    """Copy a screenshot to build/screenshots/ for humans."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, SCREENSHOTS / path.name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make system)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def analyst():
    """The README's user: a normal user in group slabkit (captures go through slabkit's
    capture helper, installed by the set-up), created for this module and removed after."""
    if os.geteuid() != 0:   # already a normal user: that is the analyst
        yield None
        return
    from slabkit.helper import install
    install.install()
    with throwaway_user(("slabkit",)) as name:
        yield name


@pytest.fixture(scope="module")
def lab(analyst):
    """A JupyterLab server run by the analyst (never root, no --allow-root) on a copy of
    notebooks/; yields (base url, token, root folder)."""
    tmp = Path(tempfile.mkdtemp(prefix="slabkit-lab-"))
    try:
        yield from _lab(analyst, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lab(analyst, tmp: Path):
    root = tmp / "notebooks"
    shutil.copytree(REPO / "notebooks", root, symlinks=False)   # the files, not the links
    settings = tmp / "settings"
    for plugin, values in {
        # no "news" or "check for updates" pop-up over the notebook
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
        # every cell in the DOM, so an output far down the page can be found
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               IPYTHONDIR=str(tmp / "ipython"), SLABKIT_CAPTURE_DIR=str(tmp / "captures"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    cmd = [python(), "-m", "jupyterlab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    (tmp / "captures").mkdir()
    if analyst is not None:
        os.chmod(tmp, 0o755)
        subprocess.run(["chown", "-R", f"{analyst}:", str(tmp)], check=True)
    with open(tmp / "jupyterlab.log", "w") as log:   # the server keeps its own copy
        if analyst is None:
            proc = subprocess.Popen(cmd, env=dict(os.environ, **env), stdout=log,
                                    stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        else:
            proc = popen_as_user(analyst, [*cmd], env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n"
                            + (tmp / "jupyterlab.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("JupyterLab did not answer within 120 s:\n"
                            + (tmp / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, token, root
    finally:
        kernels = [(p.pid, p.start) for p in procs.descendants(proc.pid)]   # kernels live in sessions of their own
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # the server's own process group
        except ProcessLookupError:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid, started in kernels:
            if procs.start_time(pid) == started:       # still the process we started
                os.kill(pid, signal.SIGKILL)


def _kernels(lab) -> list[dict]:
    url, token, _ = lab
    with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=10) as r:
        return json.loads(r.read())


def _open_notebook(page, lab, name: str) -> None:
    """Open a notebook and wait until its kernel is started, connected and idle."""
    url, token, _ = lab
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(timeout=90_000)
    deadline = time.monotonic() + 90
    while not any(k["connections"] >= 1 and k["execution_state"] == "idle"
                  for k in _kernels(lab)):
        assert time.monotonic() < deadline, f"no idle kernel connected: {_kernels(lab)}"
        time.sleep(0.5)


def _run_all(page, *, tries: int = 3) -> None:
    """Run > Run All Cells, from the menu bar as a user would. A request made while the
    page is still finishing its kernel handshake can be lost; then the first cell never
    gets an execution count and the command is given again."""
    first = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if re.search(r"\[(\*|\d+)\]", first.inner_text()):   # [*] or [1]
                return
            time.sleep(0.25)
    raise AssertionError("Run All Cells never started the first cell")


class _DentryWork:
    """Looks up missing names in a folder of its own until stopped: each lookup allocates a
    (negative) dentry, so a capture of ``dentry`` has something to see however quiet the
    machine is (CI saw none from the rest of the system in 2 s once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir()
        self.lookups = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dentry-work", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.lookups < 200_000:
            for _ in range(50):
                assert not (self.folder / f"missing-{self.lookups}").exists()
                self.lookups += 1
            self._stop.wait(0.05)   # about 1,000 a second

    def __enter__(self) -> "_DentryWork":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _can_capture(analyst) -> str | None:
    """Why the notebook's capture cannot run here, or None (the analyst captures through
    slabkit's capture helper)."""
    if analyst is None and os.geteuid() != 0:
        return "not in the slabkit group and not root"
    if not shutil.which("bpftrace") and not shutil.which("perf") \
            and not Path("/sys/kernel/tracing/events").is_dir():
        return "no tracer"
    return None


def test_notebook_01_widgets_and_a_capture(browser, lab, analyst, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open_notebook(page, lab, "01-pick-and-capture.ipynb")
        _run_all(page)

        picker = page.locator(".slabkit-cache-picker").first
        picker.wait_for(timeout=120_000)
        runner = page.locator(".slabkit-capture-runner").first
        runner.wait_for(timeout=60_000)
        # the last cell (the explorer) shows once every cell above it ran
        page.locator(".slabkit-pivot-explorer").first.wait_for(timeout=180_000)
        assert page.locator(f".jp-OutputArea-output[data-mime-type='{ERROR_MIME}']").count() == 0
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        assert any("captured" in t and "allocations" in t or "loaded the sample capture" in t
                   for t in outputs), outputs[-5:]

        why_not = _can_capture(analyst)
        if why_not is not None:   # the picker says why it has no table
            assert "needs root" in picker.inner_text()
            page.screenshot(path=tmp_path / "01-no-root.png")
            _keep(tmp_path / "01-no-root.png")
            return

        # the picker lists this machine's caches
        picker.scroll_into_view_if_needed()
        shown = re.search(r"(\d+) of (\d+) caches", picker.inner_text())
        assert shown and shown[1] == shown[2] and int(shown[1]) > 20, picker.inner_text()
        # choose a cache: search, then pick it
        search = picker.locator("input[type='text']").first
        search.fill("dentry")
        select = picker.locator(".slabkit-cache-list select")
        # the kernel filters the list: names and merged aliases that contain "dentry"
        # (buffer_head, with ext4_fc_dentry_update merged into it, may come first)
        page.wait_for_function(
            "el => Array.from(el.options).every(o => o.text.includes('dentry'))"
            " && Array.from(el.options).some(o => /^dentry\\s/.test(o.text))",
            arg=select.element_handle(), timeout=20_000)
        index = select.evaluate(
            "el => Array.from(el.options).findIndex(o => /^dentry\\s/.test(o.text))")
        select.select_option(index=index)
        page.wait_for_function(
            "el => el.innerText.includes('object size') && el.innerText.includes('dentry')",
            arg=picker.element_handle(), timeout=20_000)
        # the runner follows the picker; capture for 2 s
        cache_box = runner.locator("input[type='text']").first
        page.wait_for_function("el => el.value === 'dentry'", arg=cache_box.element_handle(),
                               timeout=20_000)
        seconds = runner.locator("input[type='number']").first
        seconds.fill("2")
        seconds.press("Enter")
        runner.scroll_into_view_if_needed()
        with _DentryWork(tmp_path / "lookups") as work:
            runner.get_by_role("button", name="Start").click()
            page.wait_for_function(
                "el => /complete \\(|interrupted \\(|failed/.test(el.innerText)",
                arg=runner.element_handle(), timeout=180_000)
        assert work.lookups > 1000, work.lookups
        text = runner.inner_text()
        assert "complete (" in text, text[-2000:]
        assert re.search(r"dentry: [\d,]+ allocations in 2\.\d s via \w+ \(complete\)", text)
        assert "top processes" in text and "top call sites" in text
        # the progress bar, fed from the capture's thread, reached the end
        bar = runner.locator(".widget-hprogress .progress-bar").first
        assert bar.evaluate("el => el.style.width") == "100%"

        runner.scroll_into_view_if_needed()
        shot = tmp_path / "01-pick-and-capture.png"
        page.screenshot(path=shot)
        _keep(shot)
        picker.screenshot(path=tmp_path / "01-cache-picker.png")
        _keep(tmp_path / "01-cache-picker.png")
        runner.screenshot(path=tmp_path / "01-capture-runner.png")
        _keep(tmp_path / "01-capture-runner.png")
        # the explorer (last cell) re-pivots when a button is clicked: whole stacks
        explorer = page.locator(".slabkit-pivot-explorer").first
        explorer.scroll_into_view_if_needed()
        explorer.get_by_role("button", name="stack", exact=True).click()
        page.wait_for_function("el => el.innerText.includes(' <- ')",
                               arg=explorer.element_handle(), timeout=30_000)
        chart = explorer.locator("img.slabkit-chart-by-stack")
        chart.wait_for(timeout=30_000)
        page.wait_for_function("el => el.complete && el.naturalWidth > 100",
                               arg=chart.element_handle(), timeout=30_000)
        page.set_viewport_size({"width": 1400, "height": 2600})   # all of it on screen
        explorer.scroll_into_view_if_needed()
        explorer.screenshot(path=tmp_path / "01-pivot-explorer.png")
        page.set_viewport_size({"width": 1400, "height": 1000})
        _keep(tmp_path / "01-pivot-explorer.png")
        # the capture is where the notebook's kernel saves them
        metas = list((lab[2].parent / "captures").glob("dentry-*/meta.json"))
        assert len(metas) == 1 and json.loads(metas[0].read_text())["status"] == "complete"
        if analyst is not None:   # through the helper, into the analyst's own files
            import pwd
            assert json.loads(metas[0].read_text())["via"] == "helper"
            uid = pwd.getpwnam(analyst).pw_uid
            assert {p.stat().st_uid for p in metas[0].parent.iterdir()} == {uid}
    finally:
        page.close()


def test_report_opens_with_its_plots(browser, tmp_path):
    sample = SAMPLES / "bpftrace-filp-outstanding"
    out = report.write_report(sample, tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate(
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 6 and all(w > 100 for w in widths), widths
        assert page.title() == f"slabkit report: {slabkit.load(sample).cache}"
        assert "Who allocates: by process" in page.inner_text("body")
        shot = tmp_path / "report.png"
        page.screenshot(path=shot, full_page=True)
        _keep(shot)
    finally:
        page.close()
