"""The server as the README and the image start it: a client dribbling its request head is cut
off at the head timeout, while ordinary requests are served (issue 12)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
HEAD_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALSCREEN_")} | {
        "TRIALSCREEN_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('head') / 'db.sqlite'}",
        "TRIALSCREEN_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
    }
    command = [
        *(sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"),
        *("--port", str(port), "--no-access-log", "--timeout-keep-alive", "5"),
        *("--h11-max-incomplete-event-size", "16384"),
        *("--http", "app.core.http_server:HeadTimeoutProtocol"),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not start")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def _seconds_until_closed(port: int, head: bytes, pause: float, limit: float) -> float:
    """Send ``head`` a byte every ``pause`` seconds; when the server closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - started
            sock.settimeout(pause)
            try:
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            if time.monotonic() - started > limit:
                break
    return float("inf")


def test_a_dribbled_request_head_is_cut_at_the_head_timeout(server: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    closed_after = _seconds_until_closed(server, head, pause=0.1, limit=8.0)
    assert closed_after < HEAD_TIMEOUT + 1.5, closed_after


def test_ordinary_requests_are_served_on_one_kept_alive_connection(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEAD_TIMEOUT * 0.6)  # idle between requests, within keep-alive
