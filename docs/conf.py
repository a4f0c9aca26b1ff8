"""Sphinx configuration for django-forksafe's documentation (Sphinx's default
theme, no network). The API reference is generated from the docstrings of the
source tree's package, imported after django.setup() with minimal settings:
no server, no driver, no C extension needed."""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from docutils import nodes  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402

settings.configure(INSTALLED_APPS=["django_forksafe"], DATABASES={})
django.setup()

project = "django-forksafe"
author = "django-forksafe contributors"
copyright = "django-forksafe contributors"

# The version, read from the package's source.
_init = ROOT / "django_forksafe" / "__init__.py"
_match = re.search(r'^__version__ = "([^"]+)"', _init.read_text(), re.MULTILINE)
release = _match.group(1) if _match else "unknown"
version = release

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "python"
html_theme = "alabaster"
html_title = f"django-forksafe {release}"
# No intersphinx and no remote images: the build needs no network.


class ForksafeCheckUsage(SphinxDirective):
    """``.. forksafe-check-usage::``: the command's --help, from its parser."""

    def run(self) -> list[Any]:
        from django_forksafe.management.commands.forksafe_check import Command

        os.environ["COLUMNS"] = "80"  # argparse's width.
        usage = Command().create_parser("manage.py", "forksafe_check").format_help()
        return [nodes.literal_block(usage, usage, language="text")]


def setup(app: Any) -> None:
    app.add_directive("forksafe-check-usage", ForksafeCheckUsage)
