"""A TCP proxy in front of a server, on its own loopback port, that makes the server unreachable on
demand without touching it (moto keeps its objects in memory: it must not be stopped).

- `cut()`: the port refuses connections and open ones are reset, like a server that is down or a
  firewall that rejects. `cut_on(marker)` does it the moment a request carrying `marker` (a key name)
  comes through, and drops that request: storage lost in the middle of a save.
- `blackhole()`: connections are accepted and nothing goes through either way, like a network partition
  that drops packets; clients find out by their own timeouts.
- `restore()`: forwarding again, on the same port. Connections held by a black hole are reset then
  rather than replayed late, so a request a client gave up on is never applied behind its back.

Every connection's bytes are pumped by two daemon threads; `connections` counts accepted connections.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from s3server import free_port


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dead peer or a REJECT rule does."""
    with contextlib.suppress(OSError):  # already closed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class FaultProxy:
    target_port: int
    port: int = field(default_factory=free_port)
    mode: str = "up"  # up | cut | blackhole
    connections: int = 0
    _listener: socket.socket | None = None
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _marker: bytes | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def cut(self) -> None:
        """Refuse new connections and reset open ones."""
        with self._lock:
            self.mode = "cut"
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()
            self._drop_all()

    def cut_on(self, marker: bytes) -> None:
        """Cut the moment a client sends bytes containing `marker`; those bytes never reach the server."""
        self._marker = marker

    def blackhole(self) -> None:
        """Accept connections but forward nothing, either way, until restore()."""
        with self._lock:
            self.mode = "blackhole"

    def restore(self) -> None:
        with self._lock:
            was, self.mode, self._marker = self.mode, "up", None
            if was == "blackhole":
                self._drop_all()
        if self._listener is None:
            self._listen()

    def stop(self) -> None:
        self.cut()

    # --- internals ----------------------------------------------------------------------------

    def _listen(self) -> None:
        deadline = time.monotonic() + 10
        while True:  # the port was ours a moment ago; retry in case the kernel still holds it
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                listener.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _drop_all(self) -> None:
        for sock in list(self._open):
            _reset(sock)
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while this one was being accepted
                    _reset(client)
                    _reset(upstream)
                    return
                self.connections += 1
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while True:
                if self.mode == "blackhole":  # hold everything; restore() resets held connections
                    time.sleep(0.05)
                    continue
                source.settimeout(0.2)
                try:
                    data = source.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                while self.mode == "blackhole":
                    time.sleep(0.05)
                if from_client and self._marker is not None and self._marker in tail + data:
                    self.cut()
                    return
                tail = data[-256:]
                sink.sendall(data)
        except OSError:
            return  # reset by cut() or restore(), or the peer went away
