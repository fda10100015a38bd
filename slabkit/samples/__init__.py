"""Sample captures shipped with slabkit (package data), so an installed slabkit has something to
show without root or a tracer: ``slabkit demo``, the notebooks and the tests use them.

Real captures of ``filp`` on a Linux 6.18 VM with the slabwork test workload running: one per
streaming backend (``bpftrace-filp``, ``perf-filp``, ``ftrace-filp``), one in outstanding mode
(``bpftrace-filp-outstanding``), each a capture folder with its raw tracer output; and
``stap-classic``, the classic slab.stp script's printed output on an old kernel.

>>> slabkit.load(slabkit.sample_path("bpftrace-filp"))        # doctest: +SKIP
<Capture 'filp' bpftrace 1.7s 35340 allocs, ...>
"""
from __future__ import annotations

from pathlib import Path

from slabkit.errors import InvalidInput, expected_one_of

#: the folder holding the sample captures (inside the installed package)
SAMPLES_DIR = Path(__file__).resolve().parent


def sample_names() -> list[str]:
    """The names of the sample captures, sorted."""
    return sorted(p.name for p in SAMPLES_DIR.iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")))


def sample_path(name: str) -> Path:
    """What :func:`slabkit.load` takes for sample capture ``name``: its capture folder, or
    for raw tracer output without a folder of tables (``stap-classic``) the output file.

    Raises :class:`~slabkit.errors.InvalidInput` naming the samples for an unknown name.
    """
    names = sample_names()
    if name not in names:
        raise InvalidInput(expected_one_of("sample capture", name, names))
    folder = SAMPLES_DIR / name
    if (folder / "meta.json").is_file():
        return folder
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return files[0] if len(files) == 1 else folder
