"""The jobs waiting for a reconcile, as keys, and the threads that reconcile them.

kopf hands each watch event to a handler along with the object's whole body (about 70 KB decoded, with
managedFields), and holds that body until the handler returns. When the handler was the reconcile itself,
a burst of 900 applies kept some 900 bodies, and as many RayJob bodies, waiting for a free thread: the peak
left the operator's RSS about 100 KB per job higher for good. So the handlers only add the job's key here
and return; `workers` threads take keys in order and reconcile.

A key waiting in the queue is there once, however many events name it: the reconcile that takes it reads
the world as it is then, which covers every event before it (the reconcile is level-based). A key added
again while its reconcile runs is queued again, so a change that raced that reconcile is never missed.

Keys from watch events go before keys from the resync (`background=True`): a sweep queues a hundred
settled jobs at once at a thousand running, and a new job queued behind them waited a second or more.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("edgetune.operator")

Key = tuple[str, str]  # (namespace, name)


class WorkQueue:
    def __init__(self, reconcile: Callable[[str, str], object], workers: int) -> None:
        self._reconcile = reconcile
        self._order: deque[Key] = deque()  # from events
        self._background: deque[Key] = deque()  # from the resync: taken when no event's key waits
        self._waiting: set[Key] = set()
        self._ready = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"edgetune-reconcile-{index}", daemon=True)
            for index in range(workers)
        ]

    def start(self) -> WorkQueue:
        for thread in self._threads:
            thread.start()
        return self

    def add(self, namespace: str, name: str, background: bool = False) -> None:
        key = (namespace, name)
        with self._ready:
            if key in self._waiting:
                if not background and key in self._background:  # an event came: it goes first now
                    self._background.remove(key)
                    self._order.append(key)
                return
            self._waiting.add(key)
            (self._background if background else self._order).append(key)
            self._ready.notify()

    def __len__(self) -> int:
        with self._ready:
            return len(self._order) + len(self._background)

    def stop(self) -> None:
        """Workers finish the reconcile they are in and take no more keys."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._order and not self._background and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return
                key = (self._order or self._background).popleft()
                self._waiting.discard(key)
            try:
                self._reconcile(*key)
            except Exception:
                log.exception("reconcile of %s/%s failed; it is retried at the next event or resync", *key)
