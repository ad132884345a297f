"""The Ray actor that hosts one worker. Thin on purpose: the engine comes from an injected factory, the job logic is
`worker.Worker`, and the actor only gives it a thread with an event loop and answers the driver's polls.

The worker starts from the constructor, so when Ray restarts a dead actor (max_restarts=-1) the new incarnation loads
the engine and resumes serving, picking up its own pending jobs, without the driver doing anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from services.inference import engine_thread
from services.inference.engine import Engine
from services.inference.forget import Forgot
from services.inference.metrics import WorkerStats
from services.inference.worker import FORGET_WAIT_S, Worker, WorkerSettings

log = logging.getLogger(__name__)


class WorkerActor:
    """Wrapped with `ray.remote(...)` by the driver, so the class itself stays importable without a Ray cluster."""

    def __init__(self, settings: WorkerSettings, engine_factory: Callable[[], Engine]) -> None:
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {settings.worker_id} %(levelname)s %(message)s")
        self.settings = settings
        self.stats = WorkerStats(settings.worker_id)
        self.error: str | None = None
        self.engine: dict[str, str] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_stop: asyncio.Event | None = None
        self._worker: Worker | None = None
        self._thread = threading.Thread(target=self._main, args=(engine_factory,), name="worker", daemon=True)
        self._thread.start()

    def _main(self, engine_factory: Callable[[], Engine]) -> None:
        try:
            # Built on the engine thread: any torch work on a second thread would slow every forward (engine_thread).
            engine = engine_thread.shared().call(engine_factory)
        except Exception as error:  # the driver reports it; health stays NOT_SERVING
            log.exception("engine failed to load")
            self.error = f"engine failed to load: {error}"
            return
        self.engine = {
            "model": engine.model_name,
            "device": str(engine.device),
            "dtype": engine.dtype,
            "tokenizer_fingerprint": engine.tokenizer_fingerprint,
        }
        asyncio.run(self._serve(engine))

    async def _serve(self, engine: Engine) -> None:
        worker = Worker(self.settings, engine)
        self.stats = worker.stats
        self._worker = worker
        self._loop = asyncio.get_running_loop()
        self._async_stop = asyncio.Event()
        if self._stop.is_set():
            self._async_stop.set()
        try:
            await worker.run(self._async_stop)
        except Exception as error:
            log.exception("worker stopped")
            self.error = f"worker stopped: {error}"
            # Let Ray restart the actor: a fresh incarnation reconnects and resumes its pending jobs.
            os._exit(1)
        finally:
            await worker.close()

    def ready(self) -> bool:
        return self.stats.ready and self.error is None

    def info(self) -> dict[str, Any]:
        return {"stats": self.stats.to_dict(), "error": self.error, "engine": self.engine}

    def forget(self, session_id: str, wait_s: float = FORGET_WAIT_S) -> Forgot:
        """Runs `Worker.forget` on the worker's loop (the driver's broadcast of a session's erase). A worker that is
        not serving yet holds nothing of any session."""
        worker, loop = self._worker, self._loop
        if worker is None or loop is None:
            return Forgot(self.settings.worker_id)
        future = asyncio.run_coroutine_threadsafe(worker.forget(session_id, wait_s), loop)
        return future.result(wait_s + 5)

    def stop(self, timeout: float = 10.0) -> None:
        """Finishes the job at hand, then stops serving."""
        self._stop.set()
        if self._loop is not None and self._async_stop is not None:
            self._loop.call_soon_threadsafe(self._async_stop.set)
        self._thread.join(timeout)
