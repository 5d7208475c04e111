"""Who is on the other end of a loopback TCP connection: the UID owning the client's socket.

A local peer's identity card says whatever it likes (the C tools always say `yuneta`), so the
agent asks the kernel instead. Both ends of a loopback connection are sockets of this host:
the client's socket is the one whose local address is our peer address and whose remote
address is our own. Its owner is what `socket_uid` returns, read with a sock_diag (inet_diag)
netlink exact lookup, one socket and no table scan; when netlink is unavailable (module not
loaded, seccomp), the same lookup in /proc/net/tcp and /proc/net/tcp6. An IPv4 client of a
dual-stack listener shows up as ``::ffff:a.b.c.d`` on our side but as an IPv4 socket in the
kernel's tables: both forms are looked up.

`Admission` holds the rule: the agent's own UID, root, members of the configured groups
(``yuneta`` by default; primary group or supplementary, read at each check so adding a user
to the group needs no restart) and explicitly listed UIDs.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["PeerCredError", "socket_uid", "socket_uid_proc", "Admission", "user_name"]

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x01
_NLMSG_ERROR = 0x02
_NLMSG_HDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid:
# sport, dport (big-endian), src[4], dst[4] (network order), if, cookie[2].
_REQ_HEAD = struct.Struct("=BBBxI")
_REQ_PORTS = struct.Struct(">HH")
_REQ_TAIL = struct.Struct("=III")
_NOCOOKIE = 0xFFFFFFFF
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid.
_UID_OFFSET = 4 + 48 + 12
_TCP_STATES_ALL = 0xFFFFFFFF


class PeerCredError(OSError):
    """The owner of a connection's client socket cannot be told."""


Address = tuple[str, int]


def _forms(host: str) -> list[tuple[int, bytes]]:
    """(family, packed address) forms under which the kernel may file a socket on `host`."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        mapped = addr.ipv4_mapped
        return [(socket.AF_INET, mapped.packed), (socket.AF_INET6, addr.packed)]
    if isinstance(addr, ipaddress.IPv4Address):
        return [
            (socket.AF_INET, addr.packed),
            (socket.AF_INET6, b"\0" * 10 + b"\xff\xff" + addr.packed),
        ]
    return [(socket.AF_INET6, addr.packed)]


def socket_uid(peer: Address, local: Address) -> int:
    """UID owning the TCP socket whose local address is `peer` and remote address `local`
    (the client end of a connection we accepted from `peer` on `local`).

    Raises `PeerCredError` when no such socket exists in this network namespace.
    """
    try:
        return _netlink_uid(peer, local)
    except PeerCredError:
        raise
    except OSError:  # no sock_diag here: read the tables instead
        return socket_uid_proc(peer, local)


def _netlink_uid(peer: Address, local: Address) -> int:
    peer_forms, local_forms = _forms(peer[0]), _forms(local[0])
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        for (family, src), (_f, dst) in zip(peer_forms, local_forms, strict=False):
            body = (
                _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, _TCP_STATES_ALL)
                + _REQ_PORTS.pack(peer[1], local[1])
                + src.ljust(16, b"\0")
                + dst.ljust(16, b"\0")
                + _REQ_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
            )
            length = _NLMSG_HDR.size + len(body)
            header = _NLMSG_HDR.pack(length, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
            nl.send(header + body)
            reply = nl.recv(65536)
            _length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(reply)
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", reply, _NLMSG_HDR.size)
                if -code == errno.ENOENT:
                    continue  # not filed under this family: try the next form
                raise OSError(-code, os.strerror(-code))
            (uid,) = struct.unpack_from("=I", reply, _NLMSG_HDR.size + _UID_OFFSET)
            return uid
    raise PeerCredError(f"no local socket {peer[0]}:{peer[1]} -> {local[0]}:{local[1]}")


def _proc_address(text: str) -> tuple[bytes, int]:
    """'0100007F:1F90' (host-order 32-bit words, hex) -> (packed address, port)."""
    hexaddr, hexport = text.split(":")
    raw = bytes.fromhex(hexaddr)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return packed, int(hexport, 16)


def socket_uid_proc(peer: Address, local: Address) -> int:
    """`socket_uid` read from /proc/net/tcp and /proc/net/tcp6."""
    wanted_peer = {packed for _f, packed in _forms(peer[0])}
    wanted_local = {packed for _f, packed in _forms(local[0])}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) < 8:
                        continue
                    src, sport = _proc_address(cols[1])
                    dst, dport = _proc_address(cols[2])
                    if sport == peer[1] and dport == local[1]:
                        if src in wanted_peer and dst in wanted_local:
                            return int(cols[7])
        except FileNotFoundError:
            continue
    raise PeerCredError(f"no local socket {peer[0]}:{peer[1]} -> {local[0]}:{local[1]}")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _gid(group: str | int) -> int | None:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None  # a group that does not exist admits nobody


@dataclass(frozen=True)
class Admission:
    """Which local UIDs may command: ours, root, members of `groups`, and `uids`."""

    groups: tuple[str | int, ...] = ("yuneta",)
    uids: tuple[int, ...] = ()
    own_uid: int = field(default_factory=os.geteuid)

    @classmethod
    def of(cls, groups: Iterable[str | int], uids: Iterable[int]) -> Admission:
        return cls(tuple(groups), tuple(int(u) for u in uids))

    def admits(self, uid: int) -> bool:
        if uid in (0, self.own_uid) or uid in self.uids:
            return True
        gids = {g for g in (_gid(group) for group in self.groups) if g is not None}
        if not gids:
            return False
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return False  # a UID without an account belongs to no group
        return not gids.isdisjoint(os.getgrouplist(entry.pw_name, entry.pw_gid))
