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
    if os.environ.get("PYTHONPATH"):     # a worktree's slabkit, for the server and kernels
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
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


ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def _wait_session_idle(lab, path: str) -> None:
    """Wait until the notebook ``path``'s kernel is started, connected and idle."""
    url, token, _ = lab
    deadline = time.monotonic() + 90
    while True:
        with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as r:
            sessions = json.loads(r.read())
        kernel = next((s["kernel"] for s in sessions if s.get("path") == path), None)
        if kernel and kernel["connections"] >= 1 and kernel["execution_state"] == "idle":
            return
        assert time.monotonic() < deadline, f"no idle kernel for {path}: {sessions}"
        time.sleep(0.5)


def _open_notebook(page, lab, name: str) -> None:
    """Open a notebook in a fresh workspace (only it on show) and wait until its kernel is
    started, connected and idle."""
    url, token, _ = lab
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
    page.locator(f"{ACTIVE} .jp-Notebook").first.wait_for(timeout=90_000)
    _wait_session_idle(lab, name)


def _run_all(page, *, tries: int = 3) -> None:
    """Run > Run All Cells, from the menu bar as a user would, in the notebook on show. A
    request made while the page is still finishing its kernel handshake can be lost; then the
    first cell never gets an execution count and the command is given again."""
    first = page.locator(f"{ACTIVE} .jp-CodeCell .jp-InputPrompt").first
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


def _shot(page_or_locator, tmp_path: Path, name: str) -> None:
    """A screenshot kept in build/screenshots/ as a test artifact."""
    path = tmp_path / name
    page_or_locator.screenshot(path=path)
    _keep(path)


def _check_flame(page, scope: str, tmp_path: Path, name: str,
                 hover_says: tuple[str, ...] = ("allocations", "%")) -> None:
    """The interactive flame graph in ``scope`` renders, a hover says ``hover_says``, a
    search highlights, a click zooms."""
    flame = page.locator(f"{scope} .slabkit-flame-plot").first
    flame.wait_for(timeout=120_000)
    holder = flame.locator("xpath=..")
    page.wait_for_function("el => el.getAttribute('data-flame-state') === 'drawn'",
                           arg=holder.element_handle(), timeout=60_000)
    boxes = flame.locator("g.slice")
    assert boxes.count() > 10, boxes.count()
    holder.scroll_into_view_if_needed()
    # hover a box: its allocations, bytes and share
    box = flame.locator("g.slice", has_text=re.compile(r"\w")).nth(1)
    box.hover()
    page.wait_for_selector(f"{scope} .hoverlayer .hovertext", timeout=10_000)
    hover = page.locator(f"{scope} .hoverlayer .hovertext").first.text_content()
    assert all(word in hover for word in hover_says), hover
    # search (for a name the graph shows): matching boxes turn magenta, the line beside
    # the box says how many and what share of the whole they cover
    label = box.text_content().strip()
    search = holder.locator(".slabkit-flame-search")
    search.fill(label)
    page.wait_for_function("el => Number(el.getAttribute('data-matches')) > 0",
                           arg=holder.element_handle(), timeout=10_000)
    fills = flame.locator("g.slice path.surface").evaluate_all(
        "els => els.map(e => e.style.fill)")
    assert "rgb(230, 0, 230)" in fills, fills[:5]
    assert re.search(r"\d+ box(es)? match(es)?, [\d.]+% of the whole",
                     holder.locator(".slabkit-flame-matches").inner_text())
    _shot(holder, tmp_path, f"{name}-flame-search.png")
    search.fill("")
    # click a process's box: it zooms to fill the width
    box.click()
    page.wait_for_function("el => el.getAttribute('data-zoomed') !== null",
                           arg=holder.element_handle(), timeout=10_000)
    page.wait_for_function(
        "([el, label]) => { const s = el.querySelector('g.slice');"
        " return s && s.textContent.trim() === label; }",
        arg=[flame.element_handle(), label], timeout=10_000)
    _shot(holder, tmp_path, f"{name}-flame-zoomed.png")


def test_notebook_01_to_02_and_a_report(browser, lab, analyst, tmp_path):
    """The analyst's path: Run All in notebook 01 (which captures nothing by itself), a live
    capture from the runner through slabkit's capture helper, the capture in the explorer,
    Open in notebook 02 (its interactive flame graph), Make report (its title names the
    cache); a screenshot of each step in build/screenshots/."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    captures = lab[2].parent / "captures"
    try:
        _open_notebook(page, lab, "01-pick-and-capture.ipynb")
        _run_all(page)

        picker = page.locator(".slabkit-cache-picker").first
        picker.wait_for(timeout=120_000)
        runner = page.locator(".slabkit-capture-runner").first
        runner.wait_for(timeout=60_000)
        explorer = page.locator(".slabkit-pivot-explorer").first
        explorer.wait_for(timeout=180_000)
        page.locator(f"{ACTIVE} .jp-CodeCell").last.locator(
            ".jp-OutputArea-output").first.wait_for(timeout=120_000)   # the last cell ran
        assert page.locator(f".jp-OutputArea-output[data-mime-type='{ERROR_MIME}']").count() == 0
        # Run All captured nothing; the explorer shows a sample and says so
        assert "Not capturing here" in page.locator(ACTIVE).inner_text()
        assert not any(captures.iterdir())
        badge = explorer.locator(".slabkit-explorer-header .slabkit-badge")
        assert "sample, recorded on vm" in badge.inner_text()
        explorer.scroll_into_view_if_needed()
        _shot(explorer, tmp_path, "01-explorer-sample.png")

        why_not = _can_capture(analyst)
        if why_not is not None:   # the runner says why before any click
            page.wait_for_function("el => /Cannot capture here/.test(el.innerText)",
                                   arg=runner.element_handle(), timeout=60_000)
            assert runner.get_by_role("button", name="Start").is_disabled()
            _shot(page, tmp_path, "01-cannot-capture.png")
            return

        # before any click the runner says it can capture, through the helper
        page.wait_for_function("el => /ready to capture/.test(el.innerText)",
                               arg=runner.element_handle(), timeout=60_000)
        assert "capture helper" in runner.inner_text()
        # the picker lists this machine's caches
        picker.scroll_into_view_if_needed()
        shown = re.search(r"(\d+) of (\d+) caches", picker.inner_text())
        assert shown and shown[1] == shown[2] and int(shown[1]) > 20, picker.inner_text()
        search = picker.locator("input[type='text']").first
        search.fill("dentry")
        select = picker.locator(".slabkit-cache-list select")
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
        cache_box = runner.locator("input[type='text']").first
        page.wait_for_function("el => el.value === 'dentry'", arg=cache_box.element_handle(),
                               timeout=20_000)
        page.wait_for_function("el => /ready to capture dentry/.test(el.innerText)",
                               arg=runner.element_handle(), timeout=60_000)
        seconds = runner.locator("input[type='number']").first
        seconds.fill("2")
        seconds.press("Enter")
        runner.scroll_into_view_if_needed()
        _shot(page, tmp_path, "01-ready.png")
        with _DentryWork(tmp_path / "lookups") as work:
            runner.get_by_role("button", name="Start").click()
            page.wait_for_function(
                "el => /complete \\(|interrupted \\(|failed/.test(el.innerText)",
                arg=runner.element_handle(), timeout=180_000)
        assert work.lookups > 1000, work.lookups
        text = runner.inner_text()
        assert "complete (" in text, text[-2000:]
        assert re.search(r"dentry: [\d,]+ allocations in 2\.\d s via \w+ \(complete\)", text)
        bar = runner.locator(".widget-hprogress .progress-bar").first
        assert bar.evaluate("el => el.style.width") == "100%"
        _shot(runner, tmp_path, "01-capture-runner.png")
        _shot(picker, tmp_path, "01-cache-picker.png")

        # the capture flowed into the explorer: its header names it, no sample badge
        page.wait_for_function(
            "el => /Explore: dentry on/.test(el.innerText)",
            arg=explorer.element_handle(), timeout=60_000)
        assert explorer.locator(".slabkit-explorer-header .slabkit-badge").count() == 0
        metas = list(captures.glob("dentry-*/meta.json"))
        assert len(metas) == 1 and json.loads(metas[0].read_text())["status"] == "complete"
        folder = metas[0].parent
        path_box = explorer.locator(".slabkit-capture-path input")
        assert path_box.input_value() == str(folder)             # the path, to copy
        if analyst is not None:   # through the helper, into the analyst's own files
            import pwd
            assert json.loads(metas[0].read_text())["via"] == "helper"
            uid = pwd.getpwnam(analyst).pw_uid
            assert {p.stat().st_uid for p in folder.iterdir()} == {uid}
        explorer.get_by_role("button", name="stack", exact=True).click()
        page.wait_for_function("el => el.innerText.includes(' <- ')",
                               arg=explorer.element_handle(), timeout=30_000)
        chart = explorer.locator("img.slabkit-chart-by-stack")
        chart.wait_for(timeout=30_000)
        page.wait_for_function("el => el.complete && el.naturalWidth > 100",
                               arg=chart.element_handle(), timeout=30_000)
        page.set_viewport_size({"width": 1400, "height": 2600})   # all of it on screen
        explorer.scroll_into_view_if_needed()
        _shot(explorer, tmp_path, "01-pivot-explorer.png")
        page.set_viewport_size({"width": 1400, "height": 1000})

        # Make report: written next to the notebook, linked; its title names the cache
        explorer.get_by_role("button", name="Make report").click()
        report_link = explorer.locator(".slabkit-capture-links a", has_text=".html")
        report_link.wait_for(timeout=180_000)
        href = report_link.get_attribute("href")
        # JupyterLab took the link over: it opens the file in JupyterLab, or, in a tab of
        # its own, from the server's /files/
        assert href and f"/files/analyses/{folder.name}.html" in href, href
        # Open in notebook 02: a copy set to this capture, opened in JupyterLab
        explorer.get_by_role("button", name="Open in notebook 02").click()
        nb_link = explorer.locator(".slabkit-capture-links a", has_text=".ipynb")
        nb_link.wait_for(timeout=30_000)
        explorer.scroll_into_view_if_needed()
        _shot(explorer, tmp_path, "01-explorer-actions.png")
        nb_link.click()
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(
            timeout=60_000)
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current",
                     has_text=f"02-explore-{folder.name}").wait_for(timeout=60_000)
        _wait_session_idle(lab, f"analyses/02-explore-{folder.name}.ipynb")
        _run_all(page)
        nb02 = page.locator(ACTIVE)
        nb02.locator(".slabkit-pivot-explorer").first.wait_for(timeout=240_000)
        assert page.locator(f"{ACTIVE} .jp-OutputArea-output[data-mime-type='{ERROR_MIME}']"
                            ).count() == 0
        said = nb02.inner_text()
        assert "dentry" in said and "sample, recorded" not in said
        _check_flame(page, ACTIVE, tmp_path, "02")
        nb02.locator(".slabkit-flame-plot").first.scroll_into_view_if_needed()
        _shot(page, tmp_path, "02-explore-a-capture.png")

        # the report, as a colleague opens it in a browser
        url, token, root = lab
        rel = (Path(root) / "analyses" / f"{folder.name}.html").relative_to(root)
        report_page = browser.new_page(viewport={"width": 1300, "height": 1000})
        try:
            report_page.goto(f"{url}/files/{rel.as_posix()}?token={token}")
            report_page.wait_for_load_state("load")
            assert report_page.title().startswith("slabkit report: dentry on "), \
                report_page.title()
            assert "dentry on" in report_page.locator("h1").inner_text()
            assert report_page.locator("#sample-badge").count() == 0
            _check_flame(report_page, "body", tmp_path, "report-live")
            report_page.screenshot(path=tmp_path / "report-live.png", full_page=True)
            _keep(tmp_path / "report-live.png")
        finally:
            report_page.close()
    finally:
        page.close()


def test_notebook_03_compares_samples_with_badges(browser, lab, tmp_path):
    """Notebook 03 on its default samples: the badge on both, the warning that they are too
    short to compare, the difference flame graph."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open_notebook(page, lab, "03-compare-captures.ipynb")
        _run_all(page)
        nb = page.locator(ACTIVE)
        flame = nb.locator(".slabkit-flame-plot").first
        flame.wait_for(timeout=240_000)
        assert page.locator(f"{ACTIVE} .jp-OutputArea-output[data-mime-type='{ERROR_MIME}']"
                            ).count() == 0
        said = nb.inner_text()
        assert said.count("sample, recorded on vm") >= 2
        assert "too short to compare reliably" in said
        nb.locator(".jp-OutputArea-output table").first.scroll_into_view_if_needed()
        _shot(page, tmp_path, "03-compare-samples.png")
        _check_flame(page, ACTIVE, tmp_path, "03-diff", hover_says=("before", "after",
                                                                  "change"))
    finally:
        page.close()


def test_report_opens_with_its_plots_and_flame_graph(browser, tmp_path):
    sample = SAMPLES / "bpftrace-filp-outstanding"
    out = report.write_report(sample, tmp_path / "report.html", note="filp under slabwork")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate(
            "Array.from(document.images).filter(i => i.offsetParent !== null)"
            ".map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 4 and all(w > 100 for w in widths), widths
        cap = slabkit.load(sample)
        assert page.title() == f"slabkit report: {cap.cache} on vm, 2026-11-30"
        assert page.locator("#sample-badge").inner_text() == "sample, recorded on vm, 2026-11-30"
        body = page.inner_text("body")
        assert "Who allocates: by process" in body and "Findings" in body
        assert "Purpose and workload: filp under slabwork" in body
        # the static flame chart gives way to the interactive one
        assert not page.locator(".slabkit-flame-static").is_visible()
        _check_flame(page, "body", tmp_path, "report-sample")
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        _keep(tmp_path / "report.png")
    finally:
        page.close()


def test_report_without_scripts_shows_the_static_flame_chart(browser, tmp_path):
    """Where scripts cannot run, the static image stays."""
    out = report.write_report(SAMPLES / "bpftrace-filp", tmp_path / "report.html")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        static = page.locator(".slabkit-flame-static")
        assert static.is_visible()
        assert static.evaluate("el => el.naturalWidth") > 100
    finally:
        context.close()
