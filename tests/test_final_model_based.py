"""A model-based test of final's public API over every store: Hypothesis drives enqueue,
enqueue_many, cancel, requeue, wait, handlers that succeed or fail, and close and reopen
of a persistent store, and checks every job's status against a small model after each step.
A failure shrinks to the shortest sequence of calls that shows it.

The model is exact because nothing runs until the test says so: one worker, whose handler
waits at a gate. A job enqueued is QUEUED, or PROCESSING if the worker took it (then it
stays so until the gate opens); ``cancel`` returns True for a job not started, and False
only for the one the worker holds. ``run`` opens the gate and waits for every job, so each
ends as its payload says: ``ok`` completes, ``fail`` fails (no retries).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from jobqueue import final
from jobqueue.final import DuplicateJob, JobFailed, Status

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

IDS = st.sampled_from([f"job-{n}" for n in range(6)])
OUTCOMES = st.sampled_from([b"ok", b"fail"])
#: Examples per store: a budget CI can afford (PostgreSQL opens a queue per example).
EXAMPLES = {"memory": 60, "lmdb": 40, "postgres": 15}
_queue_names = itertools.count()


class Gate:
    """The handler of every job: waits until the test opens the gate, then succeeds or
    fails as the payload says."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def __call__(self, payload: bytes) -> None:
        if not self.open.wait(60):
            raise TimeoutError("the gate never opened")
        if payload == b"fail":
            raise ValueError("asked to fail")


class QueueMachine(RuleBasedStateMachine):
    """What each job's status must be: absent (None), or pending with the outcome its
    payload gives, or finished. Subclassed per store (``store``, ``database_url``)."""

    store = "memory"
    database_url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.directory = tempfile.mkdtemp(prefix="jobqueue-model-")
        self.queue_name = f"model-{os.getpid()}-{next(_queue_names)}"
        self.pending: dict[str, bytes] = {}  # id -> payload, not finished
        self.finished: dict[str, tuple[Status, bytes]] = {}  # id -> status, payload
        self.stop_asked: set[str] = set()  # running when cancel() asked them to stop
        self.jq = self.open()

    def open(self) -> final.JobQueue:
        fields: dict[str, Any] = {"num_workers": 1, "handler": self.gate, "max_retries": 0,
                                  "shutdown_timeout": 30}
        if self.store == "lmdb":
            fields["persist_path"] = os.path.join(self.directory, "jobs")
        elif self.store == "postgres":
            fields.update(database_url=self.database_url, queue_name=self.queue_name,
                          prefetch=1000)
        return final.JobQueue(final.Config(**fields))

    def teardown(self) -> None:
        self.gate.open.set()
        self.jq.close(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the model ---------------------------------------------------------------------------

    def expected(self, job_id: str) -> set[Status | None]:
        if job_id in self.pending:
            return {Status.QUEUED, Status.PROCESSING}
        if job_id in self.finished:
            return {self.finished[job_id][0]}
        return {None}

    def outcome(self, job_id: str, payload: bytes) -> Status:
        """A handler that raises after cancel() asked its job to stop ends it CANCELLED."""
        if payload == b"ok":
            return Status.COMPLETED
        return Status.CANCELLED if job_id in self.stop_asked else Status.FAILED

    # -- rules ---------------------------------------------------------------------------------

    @rule(job_id=IDS, payload=OUTCOMES)
    def enqueue(self, job_id: str, payload: bytes) -> None:
        if job_id in self.pending:
            with pytest.raises(DuplicateJob):
                self.jq.enqueue(final.Job(job_id, payload))
            return
        self.jq.enqueue(final.Job(job_id, payload))  # a finished id starts a new life
        self.finished.pop(job_id, None)
        self.pending[job_id] = payload

    @rule(job_ids=st.lists(IDS, min_size=1, max_size=4, unique=True), payload=OUTCOMES)
    def enqueue_many(self, job_ids: list[str], payload: bytes) -> None:
        jobs = [final.Job(job_id, payload) for job_id in job_ids]
        if any(job_id in self.pending for job_id in job_ids):
            with pytest.raises(DuplicateJob):
                self.jq.enqueue_many(jobs)
            return  # all or none
        self.jq.enqueue_many(jobs)
        for job_id in job_ids:
            self.finished.pop(job_id, None)
            self.pending[job_id] = payload

    @rule(job_id=IDS)
    def cancel(self, job_id: str) -> None:
        status = self.jq.status(job_id)
        cancelled = self.jq.cancel(job_id)
        if job_id not in self.pending:
            assert cancelled is False
            return
        if cancelled:
            assert status is not Status.PROCESSING
            self.finished[job_id] = (Status.CANCELLED, self.pending.pop(job_id))
        else:  # the worker holds it, at the gate: asked to stop, it ends when let go
            assert self.jq.status(job_id) is Status.PROCESSING
            self.stop_asked.add(job_id)

    @rule(job_id=IDS)
    def requeue(self, job_id: str) -> None:
        finished = self.finished.get(job_id)
        if finished is not None and finished[0] is Status.FAILED:
            self.jq.requeue(job_id)
            self.pending[job_id] = self.finished.pop(job_id)[1]
        elif finished is None and job_id not in self.pending:
            with pytest.raises(KeyError):
                self.jq.requeue(job_id)
        else:
            with pytest.raises(ValueError, match="not failed"):
                self.jq.requeue(job_id)

    @rule()
    def run(self) -> None:
        """Open the gate; wait for every pending job, which ends as its payload says."""
        self.gate.open.set()
        for job_id, payload in list(self.pending.items()):
            outcome = self.outcome(job_id, payload)
            if outcome is Status.FAILED:
                with pytest.raises(JobFailed, match="asked to fail"):
                    self.jq.result(job_id, timeout=30)
            else:
                assert self.jq.wait(job_id, timeout=30) is outcome
            self.finished[job_id] = (outcome, payload)
        self.pending.clear()
        self.stop_asked.clear()
        assert self.jq.join(timeout=30)
        self.gate.open.clear()

    @rule()
    def close_and_reopen(self) -> None:
        """Run what is pending, close, and open the store again: what was finished is
        still known (but in memory, which forgets everything)."""
        self.run()
        assert self.jq.close(timeout=30) == []
        if self.store == "memory":
            self.finished.clear()
        self.jq = self.open()

    @invariant()
    def every_status_is_the_models(self) -> None:
        for job_id in (f"job-{n}" for n in range(6)):
            assert self.jq.status(job_id) in self.expected(job_id), job_id


@pytest.mark.parametrize("store", ["memory", "lmdb", "postgres"])
def test_the_api_keeps_to_the_model(store: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("database_url") if store == "postgres" else None
    machine = type(f"QueueMachine_{store}", (QueueMachine,),
                   {"store": store, "database_url": url})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES[store], stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow], database=None,
    ))
