"""Helpers for tests and benchmarks that run real components (not imported by ``import storecomp``)."""
