"""Server-side TLS over an accepted asyncio stream, by memory BIOs.

The control API takes TLS this way rather than with ``start_server(ssl=)``
or ``StreamWriter.start_tls``: a handshake that fails (no client
certificate, a foreign CA) raises here, where it is logged and counted,
instead of vanishing inside the event loop; and uvloop's ``start_tls`` on a
server stream loses the ClientHello now and then. For one small request
and answer per connection the cost of doing TLS in Python is nothing.
"""

from __future__ import annotations

import asyncio
import ssl

CHUNK = 65536


class TlsStream:
    """``await handshake()``, then read the plaintext from ``reader`` (an
    ``asyncio.StreamReader``) and answer with ``write``/``drain``/``close``.
    At most ``max_bytes`` of plaintext are taken in from the peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 context: ssl.SSLContext, max_bytes: int, limit: int) -> None:
        self._raw_reader = reader
        self._raw_writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._left = max_bytes
        self.reader = asyncio.StreamReader(limit=limit)
        self._pump: asyncio.Task[None] | None = None

    def _send_pending(self) -> None:
        if self._outgoing.pending:
            self._raw_writer.write(self._outgoing.read())

    async def _fill(self) -> bool:
        """More ciphertext from the peer; False at its end of stream."""
        data = await self._raw_reader.read(CHUNK)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        """Raises ``ssl.SSLError`` when the peer is refused (its alert is sent),
        ``ConnectionError`` when it goes away."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                if not await self._fill():
                    raise ConnectionResetError("the peer closed during the TLS handshake")
            except ssl.SSLError:
                self._send_pending()    # the alert tells the peer why
                raise
        self._send_pending()
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            while self._left > 0:
                try:
                    data = self._tls.read(min(CHUNK, self._left))
                except ssl.SSLWantReadError:
                    self._send_pending()
                    if not await self._fill():
                        break
                    continue
                except ssl.SSLZeroReturnError:
                    break
                if not data:
                    break
                self._left -= len(data)
                self.reader.feed_data(data)
            self.reader.feed_eof()
        except (ssl.SSLError, OSError) as exc:
            self.reader.set_exception(exc)

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._send_pending()

    async def drain(self) -> None:
        await self._raw_writer.drain()

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        try:
            self._tls.unwrap()               # our close_notify
        except ssl.SSLError:
            pass                             # the peer's does not matter: we close
        try:
            self._send_pending()
        finally:
            self._raw_writer.close()
