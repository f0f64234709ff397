"""Tests of `nst-fast serve` (a package: its conftest must not shadow tests/conftest.py's name)."""
