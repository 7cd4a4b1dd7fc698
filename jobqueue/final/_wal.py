"""The LMDB store's write-ahead log: where a new job is durable before LMDB holds it.

Why a log in front of LMDB: py-lmdb releases the GIL for every call, and so does ``os.write``.
Each release hands the interpreter to a busy worker thread and costs the producer tens of
microseconds to get it back, so one LMDB transaction, or even one ``write()``, per
``enqueue()`` capped a single producer near 20,000 jobs/s. The log is a file mapped into
memory: appending a job is a copy into the page cache, with no system call and no GIL
release, and it survives the process being killed like any written page. The store's flush
thread moves thousands of logged jobs at a time into LMDB in one transaction, and deletes a
segment once every job in it is in LMDB: a job is always in the log, in LMDB, or both.

Segments are preallocated with ``posix_fallocate``, so a full disk fails the allocation with
an error instead of killing the process with SIGBUS when a page is first written.

A segment ``wal-NNNNNNNN.log`` is a run of frames: ``<II`` (record length, CRC-32 of the
record) followed by the record (:mod:`jobqueue.final._records`), then zeros. A frame that does
not check out ends the segment: it was being written when the process died, unacknowledged.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator, Sequence

__all__ = ["SEGMENT_SIZE", "WriteAheadLog", "frame", "read_segment", "segment_paths"]

logger = logging.getLogger("jobqueue")

_FRAME = struct.Struct("<II")
#: Bytes preallocated per segment: about 80,000 small jobs.
SEGMENT_SIZE = 8 << 20
_PREFIX = "wal-"
_SUFFIX = ".log"


def frame(record: bytes) -> bytes:
    return _FRAME.pack(len(record), zlib.crc32(record)) + record


def segment_paths(directory: str) -> list[str]:
    """The log segments in a store directory, oldest first."""
    names = [
        name for name in os.listdir(directory)
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX)
    ]
    return [os.path.join(directory, name) for name in sorted(names)]


def read_segment(path: str) -> Iterator[bytes]:
    """Yield the records of one segment, stopping at its end or at a torn frame."""
    with open(path, "rb") as segment:
        data = segment.read()
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, checksum = _FRAME.unpack_from(data, offset)
        if length == 0 and checksum == 0:
            return  # the preallocated zeros after the last frame
        start = offset + _FRAME.size
        record = data[start : start + length]
        if len(record) != length or zlib.crc32(record) != checksum:
            logger.warning(
                "log segment %r has a torn frame at byte %d, written as the process died "
                "and never acknowledged; the rest of the segment is ignored", path, offset,
            )
            return
        yield record
        offset = start + length


class WriteAheadLog:
    """Appends frames to memory-mapped segments. Not thread-safe: the store's lock guards it.

    :meth:`append` returns a position; :meth:`retire_through` deletes every full segment
    whose frames all lie before a position that LMDB has committed.
    """

    def __init__(self, directory: str, *, fsync: bool, segment_size: int | None = None) -> None:
        self._directory = directory
        self._fsync = fsync
        self._segment_size = SEGMENT_SIZE if segment_size is None else segment_size
        existing = segment_paths(directory)
        self._number = (
            int(os.path.basename(existing[-1])[len(_PREFIX) : -len(_SUFFIX)]) if existing else 0
        )
        self._map: mmap.mmap | None = None
        self._fd = -1
        self._path = ""
        self._offset = 0
        self._full: list[tuple[str, int, int]] = []  # (path, number, descriptor), oldest first
        self._open_next(self._segment_size)

    def _open_next(self, size: int) -> None:
        number = self._number + 1
        path = os.path.join(self._directory, f"{_PREFIX}{number:08d}{_SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # ENOSPC here, not SIGBUS on a later write
            new_map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.remove(path)
            raise
        if self._map is not None:
            if self._fsync:
                os.fdatasync(self._fd)  # appends since the last group sync
            self._map.close()
            # The descriptor stays open until the segment is deleted: a group sync may
            # still be flushing it.
            self._full.append((self._path, self._number, self._fd))
        self._number, self._path, self._map, self._fd = number, path, new_map, fd
        self._offset = 0

    def append(self, frames: bytes) -> int:
        """Copy frames into the log and return the log position after them.

        Raises ``OSError`` (a full disk, say) if a new segment cannot be allocated.
        """
        assert self._map is not None
        if self._offset + len(frames) > len(self._map):
            self._open_next(max(self._segment_size, len(frames) + _FRAME.size))
        end = self._offset + len(frames)
        self._map[self._offset : end] = frames
        self._offset = end
        return self.position()

    def position(self) -> int:
        """Where the next frame goes, comparable across segments."""
        return (self._number << 40) | self._offset

    def sync_descriptor(self) -> int:
        """The descriptor to ``fdatasync`` for every frame appended so far.

        Earlier segments were synced when the log moved past them.
        """
        return self._fd

    def retire_through(self, position: int) -> None:
        """Delete the full segments whose every frame lies before ``position``."""
        committed_segment = position >> 40
        while self._full and self._full[0][1] < committed_segment:
            path, _, fd = self._full.pop(0)
            os.close(fd)
            self.remove([path])

    def close(self) -> list[str]:
        """Unmap the log; return every segment, to delete once LMDB holds their jobs."""
        if self._map is not None:
            if self._fsync:
                os.fdatasync(self._fd)
            self._map.close()
            self._map = None
            for _, _, fd in self._full:
                os.close(fd)
            os.close(self._fd)
            self._full = []
        return segment_paths(self._directory)

    @staticmethod
    def remove(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
