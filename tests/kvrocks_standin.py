"""A stand-in for Apache Kvrocks as CVAT's default install runs it (``cvat_redis_ondisk``:
``apache/kvrocks:2.15.0`` in CVAT 2.73's docker-compose.yml, ``resp3-enabled no``, with or
without ``requirepass``), for tests. Kvrocks is packaged neither for Debian nor for PyPI,
so it cannot run in CI.

It is a proxy: every data command goes to a real ``redis-server`` over RESP2 (so GET, SET,
MGET, EXPIRE, WATCH/MULTI/EXEC behave as a real server's, in RESP2's encoding, which is
Kvrocks's with RESP3 disabled), and the connection handshake is answered here as Kvrocks
answers it, written from Kvrocks's own source (``src/commands/cmd_server.cc``,
``CommandHello``, ``CommandAuth``, ``CommandClient``; ``src/server/redis_connection.cc``,
``ExecuteCommands``):

- ``HELLO [protover [AUTH [default] password] [SETNAME name]]``: protover 2 or 3 accepted,
  the reply is always a RESP2 array of 14 items (``server redis version 4.0.0 proto 2
  mode standalone role master modules <nil array>``) and the connection stays RESP2;
  AUTH inside HELLO as the AUTH command checks it;
- ``AUTH password`` (one argument only): ``-ERR Client sent AUTH, but no password is
  set`` without requirepass, ``-ERR Invalid password`` for a wrong one;
- with requirepass, any other command before authentication: ``-NOAUTH Authentication
  required.``;
- ``CLIENT`` with a subcommand other than LIST, INFO, KILL, GETNAME, SETNAME, ID (e.g.
  redis-py's ``SETINFO`` and ``MAINT_NOTIFICATIONS``): ``-ERR Syntax error, try CLIENT
  LIST|INFO|KILL ip:port|GETNAME|SETNAME``.

Faults for tests, set on the instance while it runs: ``black_hole`` (connections are
accepted and read, never answered), ``garbage`` (every command answered with an HTTP
line, as if the port belonged to something else), ``drop_before_exec`` /
``drop_after_exec`` (the next N EXEC commands: the client's connection is closed before
EXEC reaches the server, or after the server ran it and before its reply is sent).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from io import BufferedReader

KVROCKS_REDIS_VERSION = b"4.0.0"  # what Kvrocks reports as its Redis-compatible version
CLIENT_KNOWN = {b"list", b"info", b"kill", b"getname", b"setname", b"id"}
CLIENT_SYNTAX = b"-ERR Syntax error, try CLIENT LIST|INFO|KILL ip:port|GETNAME|SETNAME\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def hello_reply() -> bytes:
    """Kvrocks's HELLO answer on a RESP2 connection: its map header is a RESP2 array."""
    items = [
        bulk(b"server"),
        bulk(b"redis"),
        bulk(b"version"),
        bulk(KVROCKS_REDIS_VERSION),
        bulk(b"proto"),
        b":2\r\n",
        bulk(b"mode"),
        bulk(b"standalone"),
        bulk(b"role"),
        bulk(b"master"),
        bulk(b"modules"),
        b"*-1\r\n",
    ]
    return b"*%d\r\n" % len(items) + b"".join(items)


def read_line(reader: BufferedReader) -> bytes:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    return line


def read_command(reader: BufferedReader) -> list[bytes]:
    """One client command (an array of bulk strings, as clients send them)."""
    line = read_line(reader)
    if not line.startswith(b"*"):
        return line.strip().split()  # an inline command
    args = []
    for _ in range(int(line[1:])):
        header = read_line(reader)
        size = int(header[1:])
        args.append(reader.read(size + 2)[:-2])
    return args


def read_reply(reader: BufferedReader) -> bytes:
    """One complete RESP2 reply, as raw bytes."""
    line = read_line(reader)
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return line
    if kind == b"$":
        size = int(rest)
        return line if size < 0 else line + reader.read(size + 2)
    if kind == b"*":
        count = int(rest)
        return line + b"".join(read_reply(reader) for _ in range(max(count, 0)))
    raise ValueError(f"not a RESP2 reply: {line!r}")


def encode_command(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class KvrocksStandIn:
    """Listens on 127.0.0.1:<port> and serves as Kvrocks would, over the redis-server at
    ``upstream_port`` (one upstream connection per client connection)."""

    def __init__(self, upstream_port: int, password: str | None = None) -> None:
        self.upstream_port = upstream_port
        self.password = password
        self.black_hole = False
        self.garbage = False
        self.drop_before_exec = 0
        self.drop_after_exec = 0
        self.commands: list[list[bytes]] = []  # every command received, for assertions
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, fault: str) -> bool:
        with self._lock:
            if getattr(self, fault) > 0:
                setattr(self, fault, getattr(self, fault) - 1)
                return True
            return False

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream: socket.socket | None = None
        upstream_reader = None
        authenticated = self.password is None
        try:
            while True:
                args = read_command(reader)
                if not args:
                    continue
                with self._lock:
                    self.commands.append(args)
                if self.black_hole:
                    continue
                if self.garbage:
                    client.sendall(b"HTTP/1.1 400 Bad Request\r\n")
                    continue
                name = args[0].lower()
                if name == b"hello":
                    reply, authenticated = self._hello(args, authenticated)
                elif name == b"auth":
                    reply, authenticated = self._auth(args, authenticated)
                elif not authenticated:
                    reply = b"-NOAUTH Authentication required.\r\n"
                elif name == b"client" and (len(args) < 2 or args[1].lower() not in CLIENT_KNOWN):
                    reply = CLIENT_SYNTAX
                else:
                    if name == b"exec" and self._take("drop_before_exec"):
                        return
                    if upstream is None:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                        upstream_reader = upstream.makefile("rb")
                    upstream.sendall(encode_command(args))
                    reply = read_reply(upstream_reader)
                    if name == b"exec" and self._take("drop_after_exec"):
                        return
                client.sendall(reply)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def _check_password(self, password: bytes, authenticated: bool) -> tuple[bytes, bool]:
        if self.password is None:
            return b"-ERR Client sent AUTH, but no password is set\r\n", authenticated
        if password != self.password.encode():
            return b"-ERR Invalid password\r\n", authenticated
        return b"+OK\r\n", True

    def _auth(self, args: list[bytes], authenticated: bool) -> tuple[bytes, bool]:
        if len(args) != 2:
            return b"-ERR wrong number of arguments\r\n", authenticated
        return self._check_password(args[1], authenticated)

    def _hello(self, args: list[bytes], authenticated: bool) -> tuple[bytes, bool]:
        rest = args[1:]
        if rest:
            try:
                protocol = int(rest[0])
            except ValueError:
                return b"-ERR Protocol version is not an integer or out of range\r\n", authenticated
            if protocol not in (2, 3):
                return b"-NOPROTO unsupported protocol version\r\n", authenticated
            rest = rest[1:]
        while rest:
            option = rest[0].lower()
            if option == b"auth" and len(rest) > 1:
                if len(rest) in (3, 5):  # AUTH <user> <password>, possibly then SETNAME
                    if rest[1] != b"default":
                        return b"-ERR Invalid password\r\n", authenticated
                    rest = rest[1:]
                reply, authenticated = self._check_password(rest[1], authenticated)
                if reply != b"+OK\r\n":
                    return reply, authenticated
                rest = rest[2:]
            elif option == b"setname" and len(rest) > 1:
                rest = rest[2:]
            else:
                return b"-ERR Syntax error in HELLO option " + rest[0] + b"\r\n", authenticated
        return hello_reply(), authenticated
