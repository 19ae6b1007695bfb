"""A large request body handed to a screening worker without a long hold of the GIL.

Measured on a 56 MB body: joining the received chunks into one ``bytes`` stalls the event loop
~45 ms, and pickling that into the pool's queue stalls it another ~40 ms (the queue's feeder
thread holds the GIL for the whole copy); ``/healthz`` waits behind both. A :class:`Spool`
instead takes each chunk as it arrives into an anonymous memory file (Linux ``memfd_create``) and
goes to the worker as a duplicate of its file descriptor (multiprocessing's resource sharer:
``SCM_RIGHTS`` over a Unix socket), which the worker reads back (:func:`body_bytes`).

Where the patient data lives: only in the memory of the service's own processes, as with bytes.
A memfd has no name in any file system and the kernel frees it when its last descriptor closes,
so nothing outlives the processes even if they are killed. (``multiprocessing.shared_memory``,
the obvious alternative, creates named files under ``/dev/shm`` that any process of the same user
can open while they exist, and that outlive a killed service: not used.)

The service closes its descriptor once the job has ended (see ScreenPool.run), never before the
job was handed over: a number closed early could be reused by another file and sent instead.
"""

import os
from collections.abc import AsyncIterator
from multiprocessing.reduction import DupFd
from typing import Any

from app.core.errors import PayloadTooLarge

SPOOL_FROM = 4 * 1024 * 1024
"""Bodies from this size on are spooled: below it, joining and pickling take a few ms at most."""


def available() -> bool:
    return hasattr(os, "memfd_create")


class Spool:
    """A request body written chunk by chunk into an anonymous memory file."""

    def __init__(self, chunks: list[bytes] | None = None) -> None:
        self._fd = os.memfd_create("trialscreen-body", os.MFD_CLOEXEC)
        self.size = 0
        for chunk in chunks or ():
            self.write(chunk)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def read(self) -> bytes:
        """The body (in this process: a job run on a thread)."""
        return _read_all(self._fd, self.size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __reduce__(self) -> tuple[Any, tuple[Any, int]]:
        # Pickled into a worker's queue: a duplicate of the descriptor, not the bytes.
        return SpooledBody, (DupFd(self._fd), self.size)


class SpooledBody:
    """A :class:`Spool` as a worker receives it."""

    def __init__(self, shared: Any, size: int) -> None:
        self._shared = shared
        self.size = size

    def read(self) -> bytes:
        fd = self._shared.detach()
        try:
            return _read_all(fd, self.size)
        finally:
            os.close(fd)


Body = bytes | Spool | SpooledBody
"""A request body as a job receives it."""


async def collect(chunks: AsyncIterator[bytes], limit: int, spool: bool) -> bytes | Spool:
    """A request body from its chunks, refused (413) once over ``limit`` bytes; with ``spool``,
    from SPOOL_FROM bytes on a :class:`Spool` taking each chunk as it arrives."""
    held: list[bytes] = []
    size = 0
    spooled: Spool | None = None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            if spooled is not None:
                spooled.write(chunk)
                continue
            held.append(chunk)
            if spool and size >= SPOOL_FROM:
                spooled, held = Spool(held), []
    except BaseException:
        if spooled is not None:
            spooled.close()
        raise
    return spooled if spooled is not None else b"".join(held)


def body_bytes(body: Body) -> bytes:
    return body if isinstance(body, bytes) else body.read()


def _read_all(fd: int, size: int) -> bytes:
    # pread from 0: a duplicated descriptor shares the writer's file offset (at the end).
    data = os.pread(fd, size, 0)
    if len(data) < size:
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, got)
            if not more:
                raise OSError(f"the spooled body ended after {got} of {size} bytes")
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data
