"""A real S3 server over HTTP for tests: moto's server mode in a subprocess on a free loopback port.

A subprocess (not moto's in-process mock) because Ray workers are other processes and must reach
it over the network like any S3 endpoint, and because fault tests stop and resume it (SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# werkzeug's access log line, possibly wrapped in colour codes: "PUT /bucket/key HTTP/1.1" 200
REQUEST_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/')
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "edgetune-test", "AWS_SECRET_ACCESS_KEY": "edgetune-test-secret"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        log = (self.log_dir / f"moto-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited: {(self.log_dir / f'moto-{self.port}.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto server did not answer within 30 s")

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the server logged so far, in the order it served them."""
        log = (self.log_dir / f"moto-{self.port}.log").read_text(errors="replace")
        return REQUEST_LINE.findall(log)

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **_boto_credentials())
        client.create_bucket(Bucket=name)

    def pause(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
