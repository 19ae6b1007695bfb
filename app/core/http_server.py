"""uvicorn's h11 protocol with a deadline for the request head.

uvicorn bounds an idle keep-alive connection (``--timeout-keep-alive``) and the size of a request
head (``--h11-max-incomplete-event-size``), but not the time a client may take to send the head:
a client dribbling its headers a byte at a time holds the connection (and a slot of
``--limit-concurrency``) for as long as it likes. This protocol closes a connection whose request
head is not complete ``TRIALSCREEN_HEAD_TIMEOUT`` seconds after the connection opened or the
previous response ended. Run it with ``uvicorn --http app.core.http_server:HeadTimeoutProtocol``
(the README command and the image do).
"""

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.settings import get_settings


class HeadTimeoutProtocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = get_settings().head_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if self.head_timeout > 0:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_deadline = None
        # IDLE: no complete request head has arrived since the timer was armed.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
