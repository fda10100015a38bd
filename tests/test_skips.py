"""No test skips on its own: every skip of a live or environment-dependent test goes through
``conftest.skip_or_fail`` (or ``require_tool``, ``require_bpf``, ``require_backend``), so
``SLABKIT_REQUIRE_LIVE=1`` (CI) turns it into a failure. tests/kernels/ has its own switch
(``SLABKIT_REQUIRE_KERNELS``) and its own ``skip_or_fail``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: the one place allowed to call pytest.skip: the switch itself
SWITCH = TESTS / "conftest.py"
SKIPS = {"skip", "skipif", "importorskip", "xfail"}


def _skips(path: Path) -> list[str]:
    """``pytest.skip(...)``, ``pytest.mark.skip(if)``, ``pytest.importorskip``, ``xfail`` uses
    in one file, as ``line: text``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in SKIPS:
            base = node.value
            while isinstance(base, ast.Attribute):     # pytest.mark.skipif: down to pytest
                base = base.value
            if isinstance(base, ast.Name) and base.id == "pytest":
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_finder_sees_a_skip(tmp_path):
    probe = tmp_path / "t.py"
    probe.write_text("import pytest\n@pytest.mark.skipif(True, reason='x')\ndef t():\n"
                     "    pytest.skip('y')\n")
    assert [s.split(":")[0] for s in _skips(probe)] == ["2", "4"]


@pytest.mark.parametrize("path", sorted(p for p in TESTS.glob("*.py") if p != SWITCH),
                         ids=lambda p: p.name)
def test_no_skip_escapes_the_ci_switch(path):
    assert not _skips(path), (f"{path.name} skips without skip_or_fail (SLABKIT_REQUIRE_LIVE=1 "
                              f"would not see it): {_skips(path)}")
