"""Where a function reads or runs, as users say it: ``target=`` (None, a root folder, an SSH
destination or a :class:`~slabkit.host.target.Target`), turned into a Target here; the old
keywords (``root=``, ``host=``, ``where=``) still work, with a DeprecationWarning."""
from __future__ import annotations

import os
from typing import Union

from slabkit.errors import InvalidInput
from slabkit.host.ssh import SSHTarget
from slabkit.host.target import LocalTarget, Target

#: where a function reads or runs: None (this machine), a root folder (a fake tree), an SSH
#: destination (``"root@web1"``, ``"ssh://host:2222"``) or a :class:`Target`
Where = Union[str, os.PathLike, Target, None]


def legacy_target(target: Where, old: dict, *, func: str,
                  names: tuple[str, ...] = ("root", "host", "where")) -> Where:
    """``target=`` of a public function, or the one old keyword (``root=``, ``host=``,
    ``where=``) it replaces, with a DeprecationWarning; a TypeError for any other keyword."""
    import warnings
    unknown = [k for k in old if k not in names]
    if unknown:
        raise TypeError(f"{func}() got an unexpected keyword argument {unknown[0]!r}")
    for name in names:
        if name in old:
            warnings.warn(f"{func}({name}=...) is deprecated: use target=", DeprecationWarning,
                          stacklevel=3)
            if target is not None:
                raise InvalidInput(f"pass either target= or {name}=, not both")
            target = old[name]
    return target


def as_target(where: Where = None) -> Target:
    """Turn what a user passed (None, a root folder, a target) into a :class:`Target`.

    A string that looks like ``user@host`` or ``ssh://...`` is an SSH host (``slabkit.host.ssh``).
    """
    if where is None:
        return LocalTarget("/")
    if isinstance(where, Target):
        return where
    text = os.fspath(where)
    if text.startswith("ssh://") or ("@" in text and not text.startswith("/")):
        return SSHTarget(text)
    if not os.path.isdir(text):
        raise InvalidInput(f"root folder {text!r} does not exist; pass '/' for this machine")
    return LocalTarget(text)


