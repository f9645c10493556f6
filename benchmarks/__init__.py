"""Benchmarks: ``python -m benchmarks NAME`` (``make bench`` runs them all). Never part of the test suite."""
