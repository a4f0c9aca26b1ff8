"""
The release artefacts, as tox's lint environment builds them into DIST:

* the sdist holds every file of the source tree (git ls-files, or the files
  of an unpacked sdist) but the hosting's (IGNORED), and nothing else: the
  package and its C source, tests/, testproject/, docs/, CHANGELOG;
* no wheel carries C source;
* the wheel built with the extension has it, and is tagged for CPython on
  Linux; the one built without it (DJANGO_FORKSAFE_BUILD_NATIVE=0, or where
  no compiler is found) is the pure py3-none-any wheel.

    python tests/check_release.py DIST
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# In git, not in the sdist: the hosting's and the editors' files.
IGNORED = [".ci/*", ".github/*", ".gitignore", ".pre-commit-config.yaml", ".readthedocs.yaml"]
# In the sdist, not in git: what building it adds.
GENERATED = ["PKG-INFO", "setup.cfg", "*.egg-info/*"]
# Left in an unpacked source tree by running it.
BUILT = [".git/*", ".tox/*", ".venv/*", "build/*", "dist/*", "*.egg-info/*", "*__pycache__*", "*.so", "*.sqlite3",
         ".ruff_cache/*", ".mypy_cache/*", ".pytest_cache/*"]


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def source_files() -> set[str]:
    if (ROOT / ".git").exists():
        # The files git knows and the new ones it does not ignore (MANIFEST.in
        # takes them too).
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
        return {name for name in listed.stdout.splitlines() if not matches(name, IGNORED)}
    # An unpacked sdist: its own files are the reference.
    return {
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*")
        if path.is_file() and not matches(str(path.relative_to(ROOT)), BUILT + GENERATED)
    }


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        files = {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}
    expected = source_files()
    problems = [f"{sdist.name} lacks {name} (MANIFEST.in)" for name in sorted(expected - files)]
    problems += [
        f"{sdist.name} has {name}, which is not in the source tree (MANIFEST.in)"
        for name in sorted(files - expected)
        if not matches(name, GENERATED)
    ]
    for needed in ("django_forksafe/_native.c", "CHANGELOG.rst", "docs/index.rst", "tests/conftest.py", "tox.ini"):
        if needed not in files:
            problems.append(f"{sdist.name} lacks {needed}")
    return problems


def check_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    problems = [f"{wheel.name} carries C source {name}" for name in names if name.endswith((".c", ".h"))]
    native = [name for name in names if name.startswith("django_forksafe/_native.") and name.endswith(".so")]
    pure = wheel.name.endswith("-py3-none-any.whl")
    if pure and native:
        problems.append(f"{wheel.name} is tagged pure but carries {native[0]}")
    if not pure and not native:
        problems.append(f"{wheel.name} is tagged for a platform but lacks the C extension")
    if not pure and "-cp3" not in wheel.name:
        problems.append(f"{wheel.name}: a wheel with the C extension must be tagged for CPython")
    return problems


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIST")
    dist = Path(sys.argv[1])
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    problems = [] if len(sdists) == 1 else [f"{dist}: {len(sdists)} sdists, expected one"]
    if not any(wheel.name.endswith("-py3-none-any.whl") for wheel in wheels):
        problems.append(f"{dist}: no pure py3-none-any wheel")
    for sdist in sdists:
        problems += check_sdist(sdist)
    for wheel in wheels:
        problems += check_wheel(wheel)
    if problems:
        sys.exit("release artefacts:\n  " + "\n  ".join(problems))
    print(f"release artefacts: {', '.join(path.name for path in sdists + wheels)}: fine")


if __name__ == "__main__":
    main()
