"""Async execution: ``async def`` handlers run on one event loop the worker owns, in a
thread of its own, started on the first async job (workers without one never pay for it).

The claiming thread submits the handler's coroutine to the loop and waits for it; a stop
request (cancel, timeout, shutdown) cancels the asyncio task, which the handler sees as
JobCancelled at its next await. SystemExit/KeyboardInterrupt from a handler are turned into
an ordinary failure so that they cannot stop the loop every async job shares.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import JobCancelled
from . import tasks as _tasks
from .context import Context, set_current, stop_exception
from .outcome import Outcome, format_error

if TYPE_CHECKING:
    import asyncio    # at run time imported on the first async job, not by every worker

__all__ = ["EventLoopThread", "HandlerExit"]


class HandlerExit(Exception):
    """A SystemExit/KeyboardInterrupt raised by an async handler, carried out of the event
    loop as an ordinary exception (it would otherwise stop the loop every job shares)."""

    def __init__(self, text: str):
        self.text = text
        super().__init__(text)


class EventLoopThread:
    """One asyncio loop on a daemon thread, made on demand; ``stop()`` ends it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use)."""
        import asyncio
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="aurora-log-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def stop(self) -> None:
        """Stop the loop (if it was started) and wait briefly for its thread."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=2)

    def run_handler(self, ctx: Context, handler: _tasks.Handler) -> Outcome:
        """Run an ``async def`` handler for ctx's job on the loop; its Outcome."""
        try:
            args, kwargs = handler.call_args(ctx.job, ctx)
        except Exception as exc:
            return Outcome("fail", format_error(exc))
        try:
            return Outcome("complete", self.wait_for(ctx, None, handler.fn, args, kwargs))
        except JobCancelled as exc:
            return Outcome("fail", exc.reason, cancelled=exc.reason == "cancelled")
        except HandlerExit as exc:
            return Outcome("fail", exc.text)
        except Exception as exc:
            return Outcome("fail", format_error(exc))

    def wait_for(self, ctx: Context, awaitable: Awaitable[Any] | None,
                 fn: Callable[..., Awaitable[Any]] | None = None, args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None) -> Any:
        """Await ``awaitable`` (or ``fn(*args, **kwargs)``) on the loop from this thread and
        return its value. JobCancelled once ctx is stopped; HandlerExit for SystemExit or
        KeyboardInterrupt; whatever else the coroutine raised."""
        import asyncio
        loop = self.loop()

        async def runner() -> Any:
            set_current(ctx)             # this task's own context copy
            ctx._async_task = asyncio.current_task()
            ctx._loop = loop
            if ctx.cancelled:
                raise stop_exception(ctx.reason or "cancelled")
            try:
                if fn is not None:
                    return await fn(*args, **(kwargs or {}))
                assert awaitable is not None
                return await awaitable
            except asyncio.CancelledError:
                raise stop_exception(ctx.reason or "cancelled") from None
            except (SystemExit, KeyboardInterrupt) as exc:   # would stop the shared loop
                raise HandlerExit(format_error(exc)) from None

        fut = asyncio.run_coroutine_threadsafe(runner(), loop)
        while True:
            try:
                return fut.result(timeout=0.25)
            except TimeoutError:         # (concurrent.futures' is the builtin since 3.11)
                if ctx._final:             # timed out and settled by the monitor: give up
                    fut.cancel()
                    raise stop_exception(ctx.reason or "timeout") from None
