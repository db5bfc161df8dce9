"""Clipper: the in-process, synchronous face of ClipperRuntime.

One async core, no second copy: the runtime runs on an event loop in a background thread and
every method is called on that loop and waited for, so the caller's thread never reads state the
loop is changing (a restart half done, a swap in progress).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from pathlib import Path
from typing import Any

from veloxserve.clipper.runtime import ClipperRuntime


class Clipper:
    """`with Clipper(home) as clipper: clipper.deploy(...); clipper.predict(app, user, x)`."""

    def __init__(self, home: Path | str, **options: Any) -> None:
        self.runtime = ClipperRuntime(home, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="clipper-loop", daemon=True)
        self._thread.start()
        self._run(self.runtime.start())

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.runtime, name)
        if not callable(attribute):
            return attribute
        if inspect.iscoroutinefunction(attribute):
            return functools.wraps(attribute)(lambda *args, **kwargs: self._run(attribute(*args, **kwargs)))

        async def on_loop(*args: Any, **kwargs: Any) -> Any:
            return attribute(*args, **kwargs)

        return functools.wraps(attribute)(lambda *args, **kwargs: self._run(on_loop(*args, **kwargs)))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.runtime.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Clipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
