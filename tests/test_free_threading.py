"""
Free-threaded CPython (3.13t, 3.14t): the package imports without a warning
(so also under ``-W error``) and leaves the GIL off, which the C extension
declares it does not need; and its endpoint table takes entries from many
threads at once without losing or tearing one. On a build with the GIL the
same tests run and hold trivially; on a free-threaded one they are the
check (run the suite with that interpreter).
"""

from __future__ import annotations

import subprocess
import sys

from tests.utils import require_native

IMPORT_UNDER_W_ERROR = """
import sys, sysconfig
import django_forksafe
from django_forksafe.detection import NATIVE
free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
print(NATIVE is not None, free_threaded, gil)
"""


def test_import_under_w_error_keeps_gil_off() -> None:
    require_native()
    process = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORT_UNDER_W_ERROR],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",  # The installed package, not the source tree's.
    )
    assert process.returncode == 0, process.stderr
    native, free_threaded, gil = process.stdout.split()
    assert native == "True"
    assert gil == ("False" if free_threaded == "True" else "True")


# Threads add distinct endpoints at once until the table is full (exactly
# its size in all); then every one must be found, and one more refused.
CONCURRENT_ADDS = """
import socket, struct, threading
from django_forksafe.detection import NATIVE
threads, size = 16, NATIVE.MAX_ENDPOINTS
start = threading.Barrier(threads)
def add(first):
    start.wait()
    for port in range(first, size, threads):
        # Each with its own address too: a torn entry would mix two.
        assert NATIVE.add_endpoint(socket.AF_INET, struct.pack("!I", 0x0A000000 + port), 1000 + port)
workers = [threading.Thread(target=add, args=(first,)) for first in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
lost = [port for port in range(size)
        if not NATIVE.add_endpoint(socket.AF_INET, struct.pack("!I", 0x0A000000 + port), 1000 + port)]
refused = not NATIVE.add_endpoint(socket.AF_INET, bytes(4), 1)
print(lost, refused)
"""


def test_endpoint_table_filled_from_many_threads_at_once() -> None:
    require_native()
    for _ in range(5):  # Fresh processes: the table is the process's.
        process = subprocess.run(
            [sys.executable, "-c", CONCURRENT_ADDS], capture_output=True, text=True, timeout=60, cwd="/"
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout == "[] True\n"
