"""
The test suite. It tests django_forksafe where it is installed (tox installs
the wheel), never the source tree beside it: the subprocesses it starts find
this package through IMPORT_PATH, a directory that holds a link to it and
nothing else.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _import_path() -> str:
    digest = hashlib.sha1(bytes(_HERE)).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"forksafe-tests-path-{os.getuid()}-{digest}"
    link = directory / "tests"
    if not link.is_symlink():
        directory.mkdir(exist_ok=True)
        try:
            link.symlink_to(_HERE, target_is_directory=True)
        except FileExistsError:  # Another process made it meanwhile.
            pass
    return str(directory)


IMPORT_PATH = _import_path()
