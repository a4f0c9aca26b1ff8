"""Preloaded by the forkserver of tests.hazards.start_methods: opens a
database connection in the forkserver process at import."""

from tests.hazards.start_methods import preload

preload()
