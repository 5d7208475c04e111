"""The I/O layer of a yuno, one module per concept.

* `loop`: `IOLoop`, the one thread and one epoll every socket of a yuno lives on, with asyncio
  on top for coroutines, and the public loop API gclasses use (post, timers, fd registration,
  subprocesses with a time limit);
* `tls_session`: `TlsSession`, a sans-I/O TLS session (bytes in; plaintext, events and bytes
  to send out);
* `connection`: `Connection` (one accepted socket driving its `TlsSession`) and `Handler`;
* `server`: `TcpServer`, the listener (accept, filter, counters, handshake deadlines).

The private CPython shortcuts they use live in `yuneta.sslcompat`.
"""

from yuneta.netio.connection import Connection, EchoHandler, Handler
from yuneta.netio.loop import READ, WRITE, IOLoop, ProcessResult, Timer
from yuneta.netio.server import DEFAULT_HANDSHAKE_TIMEOUT, TcpServer
from yuneta.netio.tls_session import (
    CLOSED_BY_PEER,
    HANDSHAKE_DONE,
    TlsEvent,
    TlsFailed,
    TlsSession,
)

__all__ = [
    "CLOSED_BY_PEER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "HANDSHAKE_DONE",
    "READ",
    "WRITE",
    "Connection",
    "EchoHandler",
    "Handler",
    "IOLoop",
    "ProcessResult",
    "TcpServer",
    "Timer",
    "TlsEvent",
    "TlsFailed",
    "TlsSession",
]
