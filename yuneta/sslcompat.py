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
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

_SSL_METHODS = ("do_handshake", "read", "write", "pending", "shutdown", "version", "cipher")


def _public_wrap(ctx: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
    return ctx.wrap_bio(incoming, outgoing, server_side=True)


def _private_wrap(ctx: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
    if ctx.sslobject_class is not ssl.SSLObject:  # a subclass may override methods: honour it
        return ctx.wrap_bio(incoming, outgoing, server_side=True)
    return ctx._wrap_bio(incoming, outgoing, server_side=True)  # type: ignore[attr-defined]


class TlsSocket(_socket.socket):
    """An accepted socket whose TLS session (`tls`, a socket-BIO SSL object) runs on it.

    OpenSSL's servername callback hands CPython's `sni_callback` the SSL object's owner, or,
    without one, its socket: setting `context` here reaches the session, so no owner (and no
    second weak reference per connection) is needed.

    A subclass of the C socket type, as `accept` returns for plain connections: no Python
    `__init__` or `close` frame per connection (socket.socket's), only the weak reference
    the SSL object keeps to its socket.
    """

    __slots__ = ("tls", "__weakref__")
    tls: Any

    @property
    def context(self) -> ssl.SSLContext:
        return self.tls.context

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self.tls.context = ctx


def _public_accept(
    lsock: socket.socket, tls: bool = False
) -> tuple[socket.socket | TlsSocket, Any]:
    sock, addr = lsock.accept()
    if tls:  # the socket-BIO session selects its context through a TlsSocket
        return TlsSocket(sock.family, sock.type, 0, sock.detach()), addr
    return sock, addr


# The C-level family (an int): `socket.socket.family` converts it to an enum on every read.
_family = _socket.socket.family.__get__


def _private_accept(lsock: socket.socket, tls: bool = False) -> tuple[Any, Any]:
    fd, addr = lsock._accept()  # type: ignore[attr-defined]
    # The C socket type: no Python subclass instance, no io refcount fields; a TLS session
    # on the socket (which the SSL object holds a weak reference to) needs a TlsSocket.
    return (TlsSocket if tls else _socket.socket)(_family(lsock), socket.SOCK_STREAM, 0, fd), addr


def _private_wrap_socket(ctx: ssl.SSLContext, sock: TlsSocket) -> Any:
    obj = ctx._wrap_socket(sock, server_side=True)  # type: ignore[attr-defined]
    sock.tls = obj
    return obj


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


def _self_test_socket() -> bool:
    """A real handshake over a socket pair: the server session on a TlsSocket, its context
    switched by an sni_callback through the socket, as `Ytls` does."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sslcompat")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    fd = os.memfd_create("sslcompat")
    try:
        os.write(fd, cert.public_bytes(serialization.Encoding.PEM))
        os.write(
            fd,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        serving.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    seen: list[Any] = []

    def select(obj: Any, _name: Any, _ctx: Any) -> None:
        seen.append(obj)
        obj.context = serving

    listening.sni_callback = select
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    a, b = socket.socketpair()
    server_sock = TlsSocket(a.family, a.type, 0, a.detach())
    try:
        server_sock.setblocking(False)
        b.setblocking(False)
        server = _private_wrap_socket(listening, server_sock)
        client = client_ctx.wrap_socket(b, do_handshake_on_connect=False)
        done = set()
        for _ in range(20):
            for side in (client, server):
                if side not in done:
                    try:
                        side.do_handshake()
                        done.add(side)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
            if len(done) == 2:
                break
        client.write(b"y")
        return (
            len(done) == 2
            and seen == [server_sock]
            and server.context is serving
            and server.read(1) == b"y"
        )
    except Exception:
        return False
    finally:
        server_sock.close()
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


def wrap_socket_server(ctx: ssl.SSLContext, sock: TlsSocket) -> Any:
    """The C-level SSL object of a server session doing its own I/O on `sock` (a socket BIO;
    `sock` from `accept(lsock, tls=True)`). Only while PRIVATE["socket_bio"]; otherwise the
    caller runs a `TlsSession` over memory instead."""
    return _private_wrap_socket(ctx, sock)


#: The private shortcuts, by name (the keys of `PRIVATE`).
SHORTCUTS = ("wrap_bio", "accept", "socket_bio")


def use_private(only: Iterable[str] = SHORTCUTS) -> None:
    """Use each private shortcut (of `only`: the benchmark measures them one by one) whose
    self-test passes, and the public path for the others. All of them at import."""
    global wrap_server, accept
    only = set(only)  # read once: `only` may be any iterable
    unknown = only - set(SHORTCUTS)
    if unknown:
        raise ValueError(f"unknown sslcompat shortcut(s): {', '.join(sorted(unknown))}")
    tests = {
        "wrap_bio": _self_test_wrap,
        "accept": _self_test_accept,
        "socket_bio": _self_test_socket,
    }
    for name in SHORTCUTS:
        PRIVATE[name] = name in only and tests[name]()
    wrap_server = _private_wrap if PRIVATE["wrap_bio"] else _public_wrap
    accept = _private_accept if PRIVATE["accept"] else _public_accept


def use_public() -> None:
    """Use only public APIs (a benchmark's baseline, or a test of the fallbacks)."""
    global wrap_server, accept
    PRIVATE.update(wrap_bio=False, accept=False, socket_bio=False)
    wrap_server, accept = _public_wrap, _public_accept


use_private()
