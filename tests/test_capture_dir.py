"""Where captures go by default (``slabkit.capturing.store.default_base``): one folder of the
user's own, used by the command line, the API and the widgets alike; through sudo, the
invoking user's folder, handed to them."""
from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from conftest import SAMPLES, skip_or_fail
from users import as_user, python, throwaway_user

from slabkit.capturing import store
from slabkit.ui.cli import main


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SLABKIT_CAPTURE_DIR", "XDG_DATA_HOME", "SUDO_USER", "SUDO_UID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_variable_wins(clean_env, tmp_path):
    clean_env.setenv("SLABKIT_CAPTURE_DIR", str(tmp_path / "mine"))
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store.default_base() == tmp_path / "mine"


def test_xdg_data_home_then_home(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert store.default_base() == tmp_path / "home/.local/share/slabkit/captures"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store.default_base() == tmp_path / "xdg/slabkit/captures"
    clean_env.setenv("XDG_DATA_HOME", "relative/path")        # ignored, as the spec says
    assert store.default_base() == tmp_path / "home/.local/share/slabkit/captures"


def test_the_working_folder_does_not_matter(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path / "home"))
    clean_env.chdir(tmp_path)
    here = store.default_base()
    clean_env.chdir("/")
    assert store.default_base() == here


def test_list_shows_the_default_folder_and_the_old_one(clean_env, tmp_path, capsys):
    """`slabkit list` looks where captures go now, and in ./data/captures where 0.1 put them."""
    import shutil
    clean_env.setenv("SLABKIT_CAPTURE_DIR", str(tmp_path / "captures"))
    clean_env.chdir(tmp_path)
    assert main(["list"]) == 0
    assert f"no captures found in {tmp_path / 'captures'}" in capsys.readouterr().out
    shutil.copytree(SAMPLES / "perf-filp", tmp_path / "captures" / "filp-new")
    shutil.copytree(SAMPLES / "ftrace-filp", tmp_path / "data" / "captures" / "filp-old")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "filp-new" in out and "filp-old" in out


def test_through_sudo_the_captures_are_the_invoking_users(clean_env, tmp_path):
    """`sudo make demo`/`sudo slabkit capture`: root saves into SUDO_USER's own folder, hands
    it over, and `slabkit list` run as that user sees it."""
    if os.geteuid() != 0:
        skip_or_fail("needs root: sudo's case is root started by another user")
    with throwaway_user() as name:
        entry = pwd.getpwnam(name)
        clean_env.setenv("SUDO_USER", name)
        clean_env.setenv("SUDO_UID", str(entry.pw_uid))
        base = store.default_base()
        assert base == Path(entry.pw_dir) / ".local/share/slabkit/captures"
        clean_env.setenv("SUDO_UID", "0")                 # a SUDO_USER that is not who ran sudo
        assert store.default_base() == Path.home() / ".local/share/slabkit/captures"
        clean_env.setenv("SUDO_UID", str(entry.pw_uid))
        cap = store.load_folder(SAMPLES / "bpftrace-filp")
        folder = store.new_folder("filp", "vm")
        try:
            store.save(folder, cap)
        finally:
            folder.close()
        assert folder.path.parent == base
        for path in (folder.path, base, base.parent, base.parent.parent, base.parent.parent.parent):
            assert path.stat().st_uid == entry.pw_uid, path      # every folder made is theirs
        assert {p.stat().st_uid for p in folder.path.iterdir()} == {entry.pw_uid}
        listed = as_user(name, [python(), "-m", "slabkit", "list", "--json"],
                         env={"PYTHONPATH": os.environ.get("PYTHONPATH", str(Path.cwd()))})
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["path"] for r in rows] == [str(folder.path)]
