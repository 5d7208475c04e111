"""The only place Yuneta uses private CPython `ssl`/`socket` APIs, each with a public fallback.

Three shortcuts of the TLS listener's hot path are kept because `bench/run.py` shows, in the
same run, what they buy against the public paths ("netio-public"; see the README's figures):

* `wrap_socket_server(ctx, sock, owner)`: `SSLContext._wrap_socket` gives the C-level SSL
  object on the socket's own descriptor (a socket BIO, as nginx has). OpenSSL then reads and
  writes the socket itself and, with `SSL_MODE_RELEASE_BUFFERS` (set by CPython), holds no
  buffer while a connection is idle. Over `ssl.MemoryBIO`s (the public path), two OpenSSL
  memory buffers stay at their high-water size (the handshake flight, ~2-3 KiB) for the
  connection's life: a memory BIO never shrinks. The fallback is `TlsSession` over memory.

* `wrap_server(ctx, incoming, outgoing)`: `SSLContext._wrap_bio` returns the C-level SSL
  object that `ssl.SSLObject` wraps; calling it directly spares a Python method frame on every
  handshake step, read and write. The fallback is the public `ctx.wrap_bio(...)`.
* `accept(lsock)`: `socket._accept()` returns the bare descriptor and address, which becomes a
  C-level `_socket.socket` (no Python subclass instance, no `accept()` frame per
  connection); the fallback is the public `accept()`.

And one read that only 3.13 made public: `verified_chain_length(sslobj)`, the length of the
peer's verified chain (`SSLObject.get_verified_chain`, 3.13; the same C method since 3.10).

An import-time self-test runs each private path once (a socket pair, an in-memory SSL object)
and checks it behaves as the public one does; if anything differs or is missing (another
Python, a changed private API), the public path is used, never a guess. `PRIVATE` tells which
shortcuts are in use, and `use_public()` forces the fallbacks (for the benchmark and tests).
"""

from __future__ import annotations

import _socket
import socket
import ssl
from collections.abc import Callable
from typing import Any

_SSL_METHODS = ("do_handshake", "read", "write", "pending", "shutdown", "version", "cipher")


def _public_wrap(ctx: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
    return ctx.wrap_bio(incoming, outgoing, server_side=True)


def _private_wrap(ctx: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
    if ctx.sslobject_class is not ssl.SSLObject:  # a subclass may override methods: honour it
        return ctx.wrap_bio(incoming, outgoing, server_side=True)
    return ctx._wrap_bio(incoming, outgoing, server_side=True)  # type: ignore[attr-defined]


def _public_accept(lsock: socket.socket, weak: bool = False) -> tuple[socket.socket, Any]:
    return lsock.accept()


def _private_accept(lsock: socket.socket, weak: bool = False) -> tuple[Any, Any]:
    fd, addr = lsock._accept()  # type: ignore[attr-defined]
    # The C socket type: no Python subclass instance, no io refcount fields; `weak` asks
    # for `socket.socket`, which a socket-BIO SSL object can hold a weak reference to.
    return (socket.socket if weak else _socket.socket)(
        lsock.family, socket.SOCK_STREAM, 0, fd
    ), addr


def _private_wrap_socket(ctx: ssl.SSLContext, sock: Any, owner: Any) -> Any:
    return ctx._wrap_socket(sock, server_side=True, owner=owner)  # type: ignore[attr-defined]


def _chain_length(sslobj: Any) -> int:
    get = getattr(sslobj, "get_verified_chain", None)
    if get is None:  # ssl.SSLObject before 3.13: its C object has the method
        get = sslobj._sslobj.get_verified_chain
    return len(get() or ())


def _self_test_wrap() -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        obj = _private_wrap(ctx, ssl.MemoryBIO(), ssl.MemoryBIO())
    except Exception:
        return False
    if not all(callable(getattr(obj, name, None)) for name in _SSL_METHODS):
        return False
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:  # no ClientHello yet: what the public object raises too
        pass
    except Exception:
        return False
    else:
        return False
    return obj.context is ctx and obj.pending() == 0


def _self_test_accept() -> bool:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.create_connection(lsock.getsockname(), timeout=2.0)
        try:
            sock, addr = _private_accept(lsock)
        except Exception:
            client.close()
            return False
        try:
            ok = addr == client.getsockname() and sock.fileno() >= 0
            client.sendall(b"y")
            return ok and sock.recv(1) == b"y"
        finally:
            sock.close()
            client.close()
    except OSError:
        return False
    finally:
        lsock.close()


class _Owner:
    __slots__ = ("__weakref__",)


def _self_test_socket() -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        owner = _Owner()
        obj = _private_wrap_socket(ctx, a, owner)
        if obj.owner is not owner or obj.context is not ctx or not obj.server_side:
            return False
        if not all(callable(getattr(obj, name, None)) for name in _SSL_METHODS):
            return False
        try:
            obj.do_handshake()  # no ClientHello on the socket yet
        except ssl.SSLWantReadError:
            return True
        return False
    except Exception:
        return False
    finally:
        a.close()
        b.close()


def _self_test_chain() -> bool:
    obj = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True
    )
    try:
        return _chain_length(obj) == 0
    except Exception:
        return False


wrap_server: Callable[[ssl.SSLContext, ssl.MemoryBIO, ssl.MemoryBIO], Any] = _public_wrap
accept: Callable[[socket.socket, bool], tuple[Any, Any]] = _public_accept
#: Which private shortcuts passed the self-test and are in use.
PRIVATE: dict[str, bool] = {}
#: Whether the peer's verified chain can be read (`ssl_verify_depth` needs it).
HAS_VERIFIED_CHAIN = _self_test_chain()


def verified_chain_length(sslobj: Any) -> int:
    """Certificates in the peer's verified chain (leaf to trust anchor; 0 without one)."""
    return _chain_length(sslobj)


def wrap_socket_server(ctx: ssl.SSLContext, sock: Any, owner: Any) -> Any:
    """The C-level SSL object of a server session doing its own I/O on `sock` (a socket BIO),
    or None where that private path is not in use: then the caller runs a `TlsSession` over
    memory instead. `owner` (weak-referenceable, with a settable `context`) is what the
    context's `sni_callback` receives."""
    if not PRIVATE.get("socket_bio"):
        return None
    if ctx.sslsocket_class is not ssl.SSLSocket:  # a subclass may override methods: honour it
        return None
    return _private_wrap_socket(ctx, sock, owner)


def use_private() -> None:
    """Use each private shortcut whose self-test passes (the default at import)."""
    global wrap_server, accept
    PRIVATE["wrap_bio"] = _self_test_wrap()
    PRIVATE["accept"] = _self_test_accept()
    PRIVATE["socket_bio"] = _self_test_socket()
    wrap_server = _private_wrap if PRIVATE["wrap_bio"] else _public_wrap
    accept = _private_accept if PRIVATE["accept"] else _public_accept


def use_public() -> None:
    """Use only public APIs (a benchmark's baseline, or a test of the fallbacks)."""
    global wrap_server, accept
    PRIVATE.update(wrap_bio=False, accept=False, socket_bio=False)
    wrap_server, accept = _public_wrap, _public_accept


use_private()
