"""An ASGI app served by uvicorn on a free 127.0.0.1 port, in a thread, for tests that need a real socket."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from hub.kafka import free_port


@contextlib.contextmanager
def served(app: Any, name: str) -> Iterator[str]:
    """The app's base URL while the block runs; the server asked to stop, and waited for, after it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"uvicorn did not start on port {port}"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
