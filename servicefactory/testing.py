"""Helpers for testing your own services: run one in a background thread for the length of a test."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator, TypeVar

from servicefactory.errors import ServiceFactoryError
from servicefactory.service import ServiceBase, is_ready

S = TypeVar("S", bound=ServiceBase)

__all__ = ["running"]


@contextlib.contextmanager
def running(service: S, *, timeout: float = 10.0, **run_options: Any) -> Iterator[S]:
    """Run `service` in a thread until the block ends; yields it once its API answers.

    Signals stay with the main thread, so a `time.sleep` in loop() delays the stop at the end of
    the block by up to its length: pace such loops with `self.sleep()`.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            service.run(**run_options)
        except BaseException as exc:  # handed to the test's thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"servicefactory-test-{type(service).__name__}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while True:
        if is_ready(service):
            break
        if failure:
            raise failure[0]
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServiceFactoryError(f"{type(service).__name__} did not become ready within {timeout:g} s")
        time.sleep(0.005)
    try:
        yield service
    finally:
        service.stop()
        thread.join(timeout)
        if thread.is_alive():
            raise ServiceFactoryError(f"{type(service).__name__} did not stop within {timeout:g} s")
        if failure:
            raise failure[0]
