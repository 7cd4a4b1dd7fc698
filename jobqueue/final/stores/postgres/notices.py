"""How often the PostgreSQL store notifies: at most once per ``NOTIFY_GAP`` for each kind of
news (new jobs of each priority, jobs finished), and once more, trailing, for the news that
came within the gap. A busy producer or writer so sends a few hundred notices a second, not
one per job, and no listener misses the last news."""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["DONE", "KINDS", "NOTIFY_GAP", "NoticeGaps"]

#: A producer's notices of new jobs, per priority, come at most this often (seconds).
NOTIFY_GAP = 0.002
#: Each kind of notice by its index: new jobs of a priority (0, 1, 2), or jobs finished.
KINDS = ("0", "1", "2", "d")
DONE = 3


class NoticeGaps:
    """When each kind of notice last went, and whether news came since that none told yet.
    Not locked: its owner's lock (the writer's) guards every call."""

    def __init__(self) -> None:
        self._sent = [0.0, 0.0, 0.0, 0.0]
        self._trailing = [False, False, False, False]

    def new_jobs(self, priorities: Collection[int], now: float) -> tuple[list[int], bool]:
        """Of the priorities of new jobs, those to notify of now, and whether others wait
        for a trailing notice."""
        notify = [p for p in priorities if now - self._sent[p] >= NOTIFY_GAP]
        for p in notify:
            self._sent[p] = now
        later = [p for p in priorities if p not in notify]
        for p in later:
            self._trailing[p] = True
        return notify, bool(later)

    def next_due(self, due: float) -> float:
        """The earlier of ``due`` and when a trailing notice is due."""
        for kind in range(len(KINDS)):
            if self._trailing[kind]:
                due = min(due, self._sent[kind] + NOTIFY_GAP)
        return due

    def take_due(self, now: float) -> list[int]:
        """The trailing notices due now, marked sent."""
        due = [kind for kind in range(len(KINDS))
               if self._trailing[kind] and now - self._sent[kind] >= NOTIFY_GAP]
        for kind in due:
            self._trailing[kind] = False
            self._sent[kind] = now
        return due

    def finished_due(self, now: float) -> bool:
        """Whether a notice of finished jobs may go now."""
        return now - self._sent[DONE] >= NOTIFY_GAP

    def finished(self, notified: bool, now: float) -> None:
        """Jobs finished: a notice went (``notified``), or one is owed."""
        if notified:
            self._sent[DONE] = now
        else:
            self._trailing[DONE] = True

    def unsent(self, kinds: Collection[int]) -> None:
        """Notices taken that did not go (the batch failed): owed again."""
        for kind in kinds:
            self._trailing[kind] = True
