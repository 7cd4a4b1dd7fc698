from __future__ import annotations

import importlib.resources

import jobqueue


def test_version_and_stages() -> None:
    assert isinstance(jobqueue.__version__, str) and jobqueue.__version__
    for stage in ("naive", "improved", "final"):
        assert hasattr(jobqueue, stage)


def test_ships_py_typed() -> None:
    assert importlib.resources.files("jobqueue").joinpath("py.typed").is_file()
