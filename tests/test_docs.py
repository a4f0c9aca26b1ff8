"""
The README and the documentation against the code: the README's length,
tables and code no wider than the page, one anchored section per system
check with each hint linking to it, and the environment variables the code
reads all documented. (The lint environment builds the documentation.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.programs import with_engines
from tests.utils import ROOT

DOCS = ROOT / "docs"
# Read the Docs' default theme shows about 100 characters of a code line.
WIDTH = 100
README_LINES = 300
# Rewritten to this width elsewhere; checked here once it is.
PAGES = [
    ROOT / "README.rst",
    ROOT / "CHANGELOG.rst",
    *sorted(DOCS.glob("*.rst")),
]

_TABLE_BORDER = re.compile(r"^\s*(=+( +=+)+|\+[-=+]+\+)\s*$")
_LITERALINCLUDE = re.compile(r"^\s*\.\. literalinclude:: (\S+)")


def wide_lines(page: Path) -> list[str]:
    """The lines of tables, code blocks and included code wider than WIDTH."""
    wide: list[str] = []
    lines = page.read_text().splitlines()
    in_code_indent: int | None = None
    in_table = False
    for number, line in enumerate(lines, 1):
        indent = len(line) - len(line.lstrip())
        if in_code_indent is not None and line.strip() and indent <= in_code_indent:
            in_code_indent = None
        if _TABLE_BORDER.match(line):
            in_table = True
        checked = in_code_indent is not None or in_table or _TABLE_BORDER.match(line)
        if checked and len(line) > WIDTH:
            wide.append(f"{page.name}:{number}: {len(line)} characters")
        if line.rstrip().endswith("::") or re.match(r"^\s*\.\. code-block::", line):
            in_code_indent = indent
        if not line.strip():  # A table ends at the blank line after it.
            in_table = False
        included = _LITERALINCLUDE.match(line)
        if included:
            source = (page.parent / included.group(1)).resolve()
            name = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source.name
            wide += [
                f"{name}:{n}: {len(text)} characters (included by {page.name})"
                for n, text in enumerate(source.read_text().splitlines(), 1)
                if len(text) > WIDTH
            ]
    return wide


def test_readme_is_short() -> None:
    assert len((ROOT / "README.rst").read_text().splitlines()) <= README_LINES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_table_or_code_line_wider_than_the_page(page: Path) -> None:
    assert wide_lines(page) == []


def test_the_width_check_sees_tables_code_and_included_files(tmp_path: Path) -> None:
    included = tmp_path / "included.py"
    included.write_text("x = 1\n" + "y" * (WIDTH + 1) + "\n")
    page = tmp_path / "page.rst"
    long = "z" * (WIDTH + 1)
    page.write_text(
        f"Prose may be as long as it likes: {long}\n\n"
        f".. code-block:: python\n\n    {long}\n\nBack to prose, {long}\n\n"
        f"===  ===\na    b\n===  ===\nc    {long}\n===  ===\n\n"
        ".. literalinclude:: included.py\n"
    )
    wide = wide_lines(page)
    assert [entry.split(":")[1] for entry in wide] == ["5", "12", "2"], wide
    assert wide[2].endswith("(included by page.rst)")


def check_ids() -> list[str]:
    return re.findall(r'id="(django_forksafe\.[A-Z]\d{3})"', (ROOT / "django_forksafe" / "checks.py").read_text())


def test_every_check_has_an_anchored_section() -> None:
    from django_forksafe.checks import DOCS_URL, hint

    page = (DOCS / "checks.rst").read_text()
    assert DOCS_URL.endswith("/checks.html")
    assert sorted(check_ids()) == ["django_forksafe.I001", *(f"django_forksafe.W00{n}" for n in (1, 2, 4, 5))]
    for check_id in check_ids():
        # Sphinx's anchor for a section titled with the ID itself.
        assert f"\n{check_id}\n{'=' * len(check_id)}\n" in page, check_id
        anchor = check_id.lower().replace("_", "-").replace(".", "-")
        assert hint("Do this.", check_id) == f"Do this. See {DOCS_URL}#{anchor}"


def test_each_hint_links_to_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks as Django runs them: every hint ends with its anchor."""
    monkeypatch.setenv("DJANGO_FORKSAFE_NATIVE", "0")  # For I001.
    code = (
        "import sys, types\n"
        "from django.conf import settings\n"
        "settings.CACHES = {'default': {'BACKEND': 'django.core.cache.backends.memcached.PyMemcacheCache'}}\n"
        "sys.modules['uwsgi'] = types.ModuleType('uwsgi')  # uWSGI's own module has no __file__.\n"
        "from django_forksafe import checks\n"
        "for message in checks.check_engines() + checks.check_uwsgi() + checks.check_mechanism():\n"
        "    print(message.id, message.hint)\n"
    )
    process = with_engines(
        {"default": "django.db.backends.sqlite3", "other": "django_forksafe.backends.nosuch"}, code
    )
    printed = dict(line.split(" ", 1) for line in process.stdout.splitlines())
    assert sorted(printed) == sorted(check_ids()), process.stderr
    for check_id, text in printed.items():
        anchor = check_id.lower().replace("_", "-").replace(".", "-")
        assert text.endswith(f" See https://django-forksafe.readthedocs.io/en/latest/checks.html#{anchor}")


def test_every_environment_variable_is_documented() -> None:
    sources = [*(ROOT / "django_forksafe").rglob("*.py"), *(ROOT / "django_forksafe").glob("*.c"), ROOT / "setup.py"]
    read = {name for source in sources for name in re.findall(r"DJANGO_FORKSAFE_[A-Z_]+", source.read_text())}
    documented = set(re.findall(r"^\.\. envvar:: (DJANGO_FORKSAFE_[A-Z_]+)$", (DOCS / "api.rst").read_text(), re.M))
    assert read == documented


@pytest.mark.parametrize("page", [ROOT / "README.rst", DOCS / "quickstart.rst"], ids=lambda page: page.name)
def test_forksafe_check_examples_are_its_output(page: Path) -> None:
    """The header lines of forksafe_check's table (a line cut at "[...]"
    being a prefix of the real one) and its hazards, in its order."""
    from django_forksafe import detection
    from django_forksafe.hazards import HAZARDS
    from django_forksafe.management.commands.forksafe_check import START_METHODS

    header = [
        f"Fork detection: {detection.WIPEONFORK} ({detection.DESCRIPTION[detection.WIPEONFORK]})",
        "Mechanism: C extension: every inherited database socket silenced inside fork()",
        f"multiprocessing start method: fork ({START_METHODS['fork']})",
    ]
    lines = [line.strip() for line in page.read_text().splitlines()]
    start = lines.index(header[0])
    for shown, real in zip(lines[start : start + 3], header, strict=True):
        assert real.startswith(shown.removesuffix(" [...]")), shown
    tables = [number for number, line in enumerate(lines) if line.startswith("default  (")]
    assert tables
    for number in tables:
        hazards = [line.split("  ")[0] for line in lines[number + 1 : number + 1 + len(HAZARDS)]]
        assert hazards == list(HAZARDS)


def test_the_mechanism_line_is_the_c_extensions() -> None:
    # The example's text, as detection.py writes it (chosen at import).
    source = (ROOT / "django_forksafe" / "detection.py").read_text()
    assert '"C extension: every inherited database socket silenced inside fork()"' in source


def test_readme_instruction_count_is_performance_pages() -> None:
    """The README's instruction figures are performance.rst's medians and ranges."""
    lines = (DOCS / "performance.rst").read_text().splitlines()
    median = next(line for line in lines if line.startswith("median "))
    sign = "[+\u2212-]"  # The pages write a minus as U+2212.
    figures = re.findall(rf"\*\*({sign}[\d.]+ %)\*\* \(({sign}[\d.]+) to ({sign}[\d.]+ %)\)", median)
    assert len(figures) == 2, median
    readme = " ".join((ROOT / "README.rst").read_text().split())
    for value, low, high in figures:
        assert f"{value} " in readme and f"from {low} to {high}" in readme, (value, low, high)
