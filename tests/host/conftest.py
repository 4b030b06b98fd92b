"""Fixtures for host-side tests: a simulated-GPU host on this machine (see simhost.py)."""

from simhost import host, sim_lib  # noqa: F401 - fixtures for the tests here
