"""Sphinx configuration for django-forksafe's documentation (Sphinx's default theme, no network)."""

import pathlib
import re

project = "django-forksafe"
author = "django-forksafe contributors"
copyright = "django-forksafe contributors"

# The version, read from the package without importing it (no Django needed).
_init = pathlib.Path(__file__).resolve().parent.parent / "django_forksafe" / "__init__.py"
_match = re.search(r'^__version__ = "([^"]+)"', _init.read_text(), re.MULTILINE)
release = _match.group(1) if _match else "unknown"
version = release

extensions: list[str] = []
root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "python"
html_theme = "alabaster"
html_title = f"django-forksafe {release}"
# No intersphinx and no remote images: the build needs no network.
