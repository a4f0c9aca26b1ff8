"""
Which of make test's tox environments this machine can run: those whose
CPython is found (on PATH, which the Makefile extends with pyenv's and uv's
interpreters). With CI=true all of them must run.

    python tests/machine/interpreters.py select ENVS   # prints the ones to run
    python tests/machine/interpreters.py report ENVS   # names the others, and the fix
"""

from __future__ import annotations

import os
import re
import shutil
import sys

# tox.ini's spatialite environment runs on Debian's own Python.
BASE_PYTHONS = {"spatialite": "/usr/bin/python3"}
GET_PYTHONS = ".venv/bin/pip install uv && .venv/bin/uv python install {versions}"


def wanted_python(env: str) -> str | None:
    """The interpreter the environment needs (None: tox's own)."""
    if env in BASE_PYTHONS:
        return BASE_PYTHONS[env]
    match = re.match(r"py3(\d+)(-|$)", env)
    return f"python3.{match.group(1)}" if match else None


def missing(envs: list[str]) -> dict[str, str]:
    """The environments whose interpreter is not found, and that interpreter."""
    return {
        env: python
        for env in envs
        if (python := wanted_python(env)) is not None and shutil.which(python) is None
    }


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def stand_in() -> str:
    """An environment with everything on this very Python, for a machine that
    has none of the ones asked for (Django 6.x needs 3.12 or newer)."""
    version = sys.version_info
    django = "61" if version >= (3, 12) else "52"
    return f"py3{version[1]}-django{django}"


def forky_built() -> bool:
    """Whether the newest stack's chroot is built here (tests/machine/forky.sh
    leaves its stamp once it is): the forky environment then runs the whole
    suite, and is a full environment."""
    root = os.environ.get("FORKSAFE_FORKY_ROOT", "/var/lib/django-forksafe/forky")
    return os.path.isfile(os.path.join(root, "etc/django-forksafe-forky"))


def select(envs: list[str]) -> list[str]:
    absent = missing(envs)
    if absent and in_ci():
        sys.exit(
            "CI=true needs every environment of TEST_ENVS; no interpreter for "
            + ", ".join(f"{env} ({python})" for env, python in absent.items())
            + f"; get them with: {fix(absent)}"
        )
    chosen = [env for env in envs if env not in absent]
    full = [env for env in chosen if re.fullmatch(r"py3\d+-django\d+", env) or (env == "forky" and forky_built())]
    if absent and not full and not missing([stand_in()]):
        chosen.insert(0, stand_in())
        print(f"--- none of the full test environments has its Python here: running {stand_in()}", file=sys.stderr)
    return chosen


def fix(absent: dict[str, str]) -> str:
    versions = sorted({python.removeprefix("python") for python in absent.values() if python.startswith("python3.")})
    lines = [GET_PYTHONS.format(versions=" ".join(versions))] if versions else []
    if any(not python.startswith("python") for python in absent.values()):
        lines.append("apt-get install -y python3 (Debian's own Python)")
    return "; ".join(lines)


def report(envs: list[str]) -> None:
    absent = missing(envs)
    if absent:
        print("--- not run, no interpreter found: " + ", ".join(f"{env} ({python})" for env, python in absent.items()))
        print(f"--- to run them too: {fix(absent)}; then make test again")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("select", "report"):
        sys.exit(f"usage: {sys.argv[0]} select|report ENV,ENV,...")
    envs = [env for env in sys.argv[2].split(",") if env]
    if sys.argv[1] == "select":
        print(",".join(select(envs)))
    else:
        report(envs)


if __name__ == "__main__":
    main()
