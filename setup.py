"""Only for the optional C extension (django_forksafe/_native.c); the metadata is in setup.cfg."""

import os
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
# DJANGO_FORKSAFE_BUILD_NATIVE=0 builds the pure-Python wheel (py3-none-any),
# which pip takes wherever no platform wheel fits (macOS, PyPy, musl...).
wanted = os.environ.get("DJANGO_FORKSAFE_BUILD_NATIVE", "1") != "0"
linux_cpython = sys.platform.startswith("linux") and platform.python_implementation() == "CPython"
setup(ext_modules=[native] if wanted and linux_cpython else [])
