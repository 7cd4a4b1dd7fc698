from __future__ import annotations

import importlib
import importlib.resources

import pytest

import jobqueue


def test_version_and_stages() -> None:
    assert isinstance(jobqueue.__version__, str) and jobqueue.__version__
    for stage in ("naive", "improved", "final"):
        assert hasattr(jobqueue, stage)


@pytest.mark.parametrize("stage", ["naive", "improved", "final"])
def test_each_stage_is_a_package_with_its_queue_module(stage: str) -> None:
    """The stages sit side by side as folders: naive/_queue.py, improved/_queue.py, ..."""
    package = importlib.import_module(f"jobqueue.{stage}")
    assert importlib.resources.files(package).joinpath("_queue.py").is_file()
    assert package.JobQueue.__module__ == f"jobqueue.{stage}._queue"


def test_ships_py_typed() -> None:
    assert importlib.resources.files("jobqueue").joinpath("py.typed").is_file()
