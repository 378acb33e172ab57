"""heavylock for asyncio: wait for the lock without blocking the event loop.

    from heavylock import aio

    async with aio.open_lock(path, timeout=60):   # Timeout after 60 s
        ...

How it waits: the backend's blocking ``acquire`` runs in a thread of its
own.  The native backend waits once (keeping its place in the queue) and its
``on_wait`` looks at a "cancelled" flag every ``SLICE`` seconds; the others
wait in slices of ``SLICE`` seconds and look at the flag between them.
When the waiting task is cancelled, the flag is set under
a mutex shared with the thread: if the thread has already won, the task
releases; if it wins afterwards, the thread releases itself.  The task then
waits (at most one slice) for the thread to finish, so that when the
``CancelledError`` reaches the caller nothing is locked and the handle is
free for the next ``acquire``.

A dedicated thread per wait, not the loop's default executor: a queue of
waiters would otherwise fill the executor that ``to_thread`` users share.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Any, Dict, Optional, Type

from heavylock.backends import (_DEFAULT, BaseLock, NativeLock, PathArg, Timeout,
                                describe_holder, open_lock as _open_lock, redact)

__all__ = ["AsyncLock", "open_lock", "SLICE"]

#: Longest single blocking call in the waiting thread; bounds how long a
#: cancellation takes to settle.
SLICE = 0.2


class _Wait:
    """What the waiting thread and the cancelling task agree on."""

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.cancelled = False
        self.won = False


class AsyncLock:
    """An asyncio face on any backend's handle (see :func:`open_lock`)."""

    def __init__(self, lock: BaseLock) -> None:
        self.sync = lock

    @property
    def path(self) -> str:
        return self.sync.path

    @property
    def held(self) -> bool:
        return self.sync.held

    @property
    def timeout(self) -> Optional[float]:
        return self.sync.timeout

    @property
    def kind(self) -> str:
        return self.sync.kind

    def set_label(self, label: Optional[str]) -> None:
        self.sync.set_label(label)

    def set_weight(self, nbytes: int, source: str = "declared") -> None:
        self.sync.set_weight(nbytes, source)

    def check(self) -> None:
        self.sync.check()

    def release(self) -> None:
        self.sync.release()

    def close(self) -> None:
        self.sync.close()

    def _wait(self, timeout: Optional[float], state: _Wait) -> bool:
        """In the waiting thread: acquire until won, out of time or
        cancelled."""
        lk = self.sync
        if isinstance(lk, NativeLock):
            # One wait that keeps its place in the queue (slots admit first
            # come, first served); the core's wait callback looks at the
            # flag every SLICE seconds.
            def cancelled(st: Dict[str, Any], waited: float) -> bool:
                with state.mu:
                    return state.cancelled

            with state.mu:
                if state.cancelled:
                    return False
            if not lk.acquire(timeout, on_wait=cancelled, first=SLICE, every=SLICE):
                return False
            with state.mu:
                if not state.cancelled:
                    state.won = True
                    return True
            lk.release()  # the task gave up while we won: nothing stays locked
            return False
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            with state.mu:
                if state.cancelled:
                    return False
            left = None if deadline is None else deadline - time.monotonic()
            t = SLICE if left is None else max(0.0, min(SLICE, left))
            if lk.acquire(t):
                with state.mu:
                    if not state.cancelled:
                        state.won = True
                        return True
                lk.release()  # the task gave up while we won: nothing stays locked
                return False
            if left is not None and left <= SLICE:
                return False

    async def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take the lock (timeouts as :meth:`BaseLock.acquire`); False when
        busy or out of time.  Cancelling the task leaves nothing locked."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        state = _Wait()

        def settle(result: Optional[bool], exc: Optional[BaseException]) -> None:
            if done.done():
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(bool(result))

        def run() -> None:
            try:
                r = self._wait(timeout, state)
            except BaseException as e:  # handed to the task, raised there
                loop.call_soon_threadsafe(settle, None, e)
            else:
                loop.call_soon_threadsafe(settle, r, None)

        # the name shows in thread dumps and "Exception in thread" lines
        threading.Thread(target=run, name=f"heavylock-aio-wait {redact(self.path)}",
                         daemon=True).start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            with state.mu:
                state.cancelled = True
                won = state.won
            if won:
                self.sync.release()
            await _settled(done)
            raise

    async def lock(self, timeout: Optional[float] = _DEFAULT) -> AsyncLock:
        """Take the lock or raise :class:`~heavylock.Timeout` naming the
        holder; ``timeout`` defaults to the handle's."""
        t = self.sync.timeout if timeout is _DEFAULT else timeout
        if not await self.acquire(t):
            holder = await asyncio.get_running_loop().run_in_executor(
                None, describe_holder, self.path)
            raise Timeout(self.path, holder, t)
        return self

    async def __aenter__(self) -> AsyncLock:
        return await self.lock()

    async def __aexit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        if self.held:
            self.release()

    def __repr__(self) -> str:
        return f"<AsyncLock {self.sync!r}>"


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait for the waiting thread to finish (within one slice), even when
    cancelled again meanwhile: the caller must not see a busy handle."""
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue
        except BaseException:
            break
    if fut.done() and not fut.cancelled():
        fut.exception()  # retrieved: no "exception was never retrieved" noise


def open_lock(path: PathArg, backend: Optional[str] = None, *,
              timeout: Optional[float] = None, label: Optional[str] = None, slots: int = 1,
              budget: int = 0) -> AsyncLock:
    """:func:`heavylock.open_lock` for asyncio: ``async with open_lock(p):``."""
    return AsyncLock(_open_lock(path, backend, timeout=timeout, label=label, slots=slots,
                                budget=budget))
