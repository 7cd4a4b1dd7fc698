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


def test_the_installed_package_ships_its_data() -> None:
    """What an install holds (its RECORD), not this checkout: py.typed and the PostgreSQL
    store's SQL. An editable install holds no copy, and says so."""
    import importlib.metadata
    import json

    distribution = importlib.metadata.distribution("jobqueue")
    direct = distribution.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        return  # (the checkout is the package: test_pg_sql reads its files)
    shipped = {str(path) for path in distribution.files or ()}
    for needed in ("jobqueue/py.typed", "jobqueue/final/stores/postgres/sql/queries.sql",
                   "jobqueue/final/stores/postgres/sql/schema.sql",
                   "jobqueue/final/stores/postgres/sql/processes.sql",
                   "jobqueue/final/stores/postgres/sql/migrations/003_result_json.sql"):
        assert needed in shipped, needed
