"""The priority levels shared by the improved and final stages."""

from __future__ import annotations

import enum

__all__ = ["Priority"]


class Priority(enum.IntEnum):
    """How urgent a job is. A lower value is more urgent, so values index per-priority lists."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2
