"""Only for the optional C extension (django_forksafe/_native.c); the metadata is in pyproject.toml."""

import os
import platform
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup


def can_compile() -> bool:
    """Whether a C extension builds here: a compiler, and Python's headers.

    Asked before the build, so that where it cannot the wheel is the pure
    py3-none-any one (which pip may reuse anywhere), never a CPython-tagged
    wheel without the extension (which pip would cache and keep reusing on
    this machine after it gets a compiler)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "probe.c")
        with open(source, "w") as file:
            file.write("#include <Python.h>\nint forksafe_probe(void) { return Py_IsInitialized(); }\n")
        try:
            compiler.compile([source], output_dir=directory, include_dirs=[sysconfig.get_paths()["include"]])
        except (CCompilerError, DistutilsError, OSError):
            return False
    return True


# Linux and CPython only. DJANGO_FORKSAFE_BUILD_NATIVE=0 builds the
# pure-Python wheel (py3-none-any), which pip takes wherever no platform
# wheel fits (macOS, PyPy, musl...); so does a machine with no compiler or no
# Python headers (said below). Where the extension is built, a failure to
# build it is an error: the package never installs without it by accident.
wanted = os.environ.get("DJANGO_FORKSAFE_BUILD_NATIVE", "1") != "0"
linux_cpython = sys.platform.startswith("linux") and platform.python_implementation() == "CPython"
native = wanted and linux_cpython and can_compile()
if wanted and linux_cpython and not native:
    print(
        "django-forksafe: no C compiler or no Python headers here: building the pure-Python wheel "
        "(the package works without its C extension; to have it: apt-get install gcc python3-dev)",
        file=sys.stderr,
    )
setup(
    ext_modules=[
        Extension(
            "django_forksafe._native",
            sources=["django_forksafe/_native.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
    if native
    else []
)
