"""Only for the optional C extension (django_forksafe/_native.c); the metadata is in setup.cfg."""

import platform
import sys

from setuptools import Extension, setup

# Linux and CPython only. optional=True: where it cannot be built (no
# compiler), the package installs without it and works in pure Python.
native = Extension(
    "django_forksafe._native",
    sources=["django_forksafe/_native.c"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    optional=True,
)
setup(
    ext_modules=[native] if sys.platform.startswith("linux") and platform.python_implementation() == "CPython" else []
)
