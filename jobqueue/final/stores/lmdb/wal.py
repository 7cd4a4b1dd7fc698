"""The LMDB store's write-ahead log: where a new job is durable before LMDB holds it.

Why a log in front of LMDB: py-lmdb releases the GIL for every call, and so does ``os.write``.
Each release hands the interpreter to a busy worker thread and costs the producer tens of
microseconds to get it back, so one LMDB transaction, or even one ``write()``, per
``enqueue()`` capped a single producer near 20,000 jobs/s. The log is a file mapped into
memory: appending a job is a copy into the page cache, with no system call and no GIL
release, and it survives the process being killed like any written page. The store's flush
thread moves thousands of logged jobs at a time into LMDB in one transaction and records, in
the same transaction, the log position it covers (the checkpoint): at the next start only
frames from the checkpoint on are replayed, and segments wholly before it are deleted.

Segments are preallocated with ``posix_fallocate``, so a full disk fails the allocation with
an error instead of killing the process with SIGBUS when a page is first written.

A segment ``wal-NNNNNNNN.log`` is a run of frames: ``<II`` (record length, CRC-32 of the
record) followed by the record (:mod:`.record_format`), then zeros. The top bit of
the length marks a revoked frame, one whose ``enqueue()`` raised after it was written (its
group sync failed): replay skips it. Any other frame that does not check out ends the
segment: it was being written when the process died, and was never acknowledged.

A position is ``segment number << 40 | offset``: positions only grow, across segments.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator, Sequence

from jobqueue.final.stores.lmdb.directory import FILE_MODE

__all__ = [
    "FIRST_SEGMENT_SIZE",
    "SEGMENT_SIZE",
    "WriteAheadLog",
    "frame",
    "position",
    "read_segment",
    "segment_number",
    "segment_paths",
]

logger = logging.getLogger("jobqueue")

_FRAME = struct.Struct("<II")
_REVOKED = 1 << 31
#: Bytes preallocated per segment once the log is busy: about 40,000 small jobs.
SEGMENT_SIZE = 8 << 20
#: Bytes preallocated for a store's first segment: each next one is twice the last, up to
#: SEGMENT_SIZE. A store opens on a volume with this much room, not 8 MiB.
FIRST_SEGMENT_SIZE = 64 << 10
_PREFIX = "wal-"
_SUFFIX = ".log"
_OFFSET_BITS = 40


def frame(record: bytes) -> bytes:
    return _FRAME.pack(len(record), zlib.crc32(record)) + record


def position(number: int, offset: int) -> int:
    return (number << _OFFSET_BITS) | offset


def segment_paths(directory: str) -> list[str]:
    """The log segments in a store directory, oldest first."""
    names = [
        name for name in os.listdir(directory)
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX)
    ]
    return [os.path.join(directory, name) for name in sorted(names)]


def segment_number(path: str) -> int:
    return int(os.path.basename(path)[len(_PREFIX) : -len(_SUFFIX)])


def read_segment(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, record) for each frame of a segment, skipping revoked ones and stopping
    at its end or at a torn frame."""
    with open(path, "rb") as segment:
        data = segment.read()
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, checksum = _FRAME.unpack_from(data, offset)
        if length == 0 and checksum == 0:
            return  # the preallocated zeros after the last frame
        start = offset + _FRAME.size
        if length & _REVOKED:
            offset = start + (length & ~_REVOKED)
            continue
        record = data[start : start + length]
        if len(record) != length or zlib.crc32(record) != checksum:
            logger.warning(
                "log segment %r has a torn frame at byte %d, written as the process died "
                "and never acknowledged; the rest of the segment is ignored", path, offset,
            )
            return
        yield offset, record
        offset = start + length


class _Segment:
    __slots__ = ("path", "number", "fd", "map")

    def __init__(self, path: str, number: int, fd: int, mapped: mmap.mmap) -> None:
        self.path = path
        self.number = number
        self.fd = fd
        self.map = mapped


class WriteAheadLog:
    """Appends frames to memory-mapped segments. Not thread-safe: the store's lock guards it.

    ``first_number`` is the segment number to start at: above any the store has used, so
    positions keep growing across restarts.
    """

    def __init__(self, directory: str, first_number: int, segment_size: int | None = None) -> None:
        self._directory = directory
        self._segment_size = SEGMENT_SIZE if segment_size is None else segment_size
        self._next_size = min(FIRST_SEGMENT_SIZE, self._segment_size)
        self._full: list[_Segment] = []  # oldest first; kept open for sync, revoke, retire
        self._unsynced: list[_Segment] = []  # segments appended to since the last sync
        self._offset = 0
        self._current = self._allocate(first_number, self._next_size)

    def _allocate(self, number: int, size: int) -> _Segment:
        path = os.path.join(self._directory, f"{_PREFIX}{number:08d}{_SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.posix_fallocate(fd, 0, size)  # ENOSPC here, not SIGBUS on a later write
            mapped = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.remove(path)
            raise
        return _Segment(path, number, fd, mapped)

    def append(self, frames: bytes) -> int:
        """Copy frames into the log; return the position of the first.

        Raises ``OSError`` (a full disk, say) if a new segment cannot be allocated.
        """
        current = self._current
        if self._offset + len(frames) > len(current.map):
            self._next_size = min(2 * self._next_size, self._segment_size)
            size = max(self._next_size, len(frames) + _FRAME.size)
            current = self._allocate(current.number + 1, size)
            self._full.append(self._current)
            self._current = current
            self._offset = 0
        start = self._offset
        end = start + len(frames)
        current.map[start:end] = frames
        self._offset = end
        if not self._unsynced or self._unsynced[-1] is not current:
            self._unsynced.append(current)
        return position(current.number, start)

    def position(self) -> int:
        """Where the next frame goes."""
        return position(self._current.number, self._offset)

    def take_unsynced(self) -> list[int]:
        """Descriptors to ``fdatasync`` for every frame appended so far, which the caller
        closes; forgets them.

        Duplicates of the segments' own: a cancel's frame is in LMDB's next batch at once,
        so the checkpoint may pass it, and its segment be retired and closed, while the
        caller flushes without the lock. Syncing a file deleted meanwhile does no harm.
        """
        descriptors = [os.dup(segment.fd) for segment in self._unsynced]
        self._unsynced = []
        return descriptors

    def revoke(self, start: int, length: int) -> None:
        """Mark the frames of one append, ``length`` bytes from position ``start``, revoked."""
        number = start >> _OFFSET_BITS
        segments = [self._current, *self._full]
        mapped = next(segment.map for segment in segments if segment.number == number)
        offset = start & ((1 << _OFFSET_BITS) - 1)
        stop = offset + length
        while offset < stop:
            size, _ = _FRAME.unpack_from(mapped, offset)
            struct.pack_into("<I", mapped, offset, size | _REVOKED)
            offset += _FRAME.size + (size & ~_REVOKED)

    def retire_through(self, checkpoint: int) -> list[_Segment]:
        """Take the full segments that lie wholly before ``checkpoint`` out of the log, for
        :meth:`discard` to delete: unmapping and unlinking take a millisecond or two, which
        the caller need not spend holding the lock that appends wait for."""
        segment_of_checkpoint = checkpoint >> _OFFSET_BITS
        retired = []
        while self._full and self._full[0].number < segment_of_checkpoint:
            segment = self._full.pop(0)
            if segment in self._unsynced:
                self._unsynced.remove(segment)
            retired.append(segment)
        return retired

    @classmethod
    def discard(cls, segments: Sequence[_Segment]) -> None:
        """Unmap and delete segments taken out of the log."""
        for segment in segments:
            segment.map.close()
            os.close(segment.fd)
        cls.remove([segment.path for segment in segments])

    def close(self) -> list[str]:
        """Unmap the log; return every segment, to delete once LMDB holds their jobs."""
        for segment in [*self._full, self._current]:
            self._forget(segment)
        self._full = []
        return segment_paths(self._directory)

    def _forget(self, segment: _Segment) -> None:
        if segment in self._unsynced:
            self._unsynced.remove(segment)
        if not segment.map.closed:
            segment.map.close()
            os.close(segment.fd)

    @staticmethod
    def remove(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
