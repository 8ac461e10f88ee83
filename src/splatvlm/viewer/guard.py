"""The viewer's network guard: where it may listen, which pages may talk to it, and how many at once.

Binding to loopback does not stop a browser: a page on any other site can open ``ws://127.0.0.1:PORT``.
So every websocket handshake must come from this viewer's own page (or from a local program that sends no
Origin), and viser's public share tunnel is refused unless asked for. A server reachable from the network can
also require a secret token in its URL path (``http://HOST:PORT/<token>``, as Jupyter prints one at start):
viser's page opens its websocket on the page's own path, so the token travels with every handshake.
Connections are capped, so clients cannot use up the file descriptors the run needs for its own writes;
errors of the server's event loop (a failed accept under a low descriptor limit repeats every second) are
printed once, in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hmac
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import SplatVLMError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def check_bindable(host: str, port: int) -> bool:
    """Raise a clear error if we can't listen on ``host``; return False if only the port is busy.

    viser retries bind failures on the next port up to 1000 times and, if all fail, never returns,
    so a typo in the host would hang instead of failing: check it here first.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SplatVLMError(f"viewer host {host!r} is not a valid address: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise SplatVLMError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return True


def allowed_origins(host: str, port: int) -> set[str]:
    """The browser origins of this viewer's own page: loopback names and the chosen host, on ``port``."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if host in ("0.0.0.0", "::", ""):  # every interface: the page may be opened by this machine's names
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(f"[{host}]" if ":" in host else host)
    return {f"http://{name.lower()}:{port}" for name in names}


def origin_allowed(origin: str | None, host: str, port: int) -> bool:
    """A websocket handshake is accepted without an Origin (a local program) or from our own page.

    Browsers always send Origin; a page on another site that opens ``ws://127.0.0.1:PORT`` sends its
    own, so this is what stops other sites from driving the viewer (cross-site websocket hijacking).
    """
    return origin is None or origin.lower() in allowed_origins(host, port)


def token_ok(path: str, token: str) -> bool:
    """Whether a request path (query string included) is ``/<token>``, compared in constant time."""
    given = path.partition("?")[0].strip("/")
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


_SERVE_PATCH = threading.Lock()


def say_once(seen: set, key: Any, line: str) -> None:
    """Print ``line`` to stderr the first time ``key`` is seen."""
    if key not in seen:
        seen.add(key)
        print(line, file=sys.stderr, flush=True)


def loop_errors_once(default: Callable[[dict], None]) -> Callable[[Any, dict], None]:
    """An asyncio exception handler: a failed accept() (EMFILE, ENFILE, ENOBUFS, ENOMEM: asyncio retries it
    every second, with a traceback each time) is one line, once per errno; anything else goes to ``default``."""
    seen: set = set()

    def handler(loop: Any, context: dict) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, OSError) and "accept" in message:
            name = errno.errorcode.get(exc.errno or 0, "")
            say_once(seen, exc.errno, f"viewer: cannot accept a connection: {exc.strerror or exc} (errno "
                     f"{exc.errno} {name}); retrying, its clients stay served; not shown again")  # fmt: skip
            return
        if "_start_serving" in message:  # the accept retry, due after the server was closed
            return
        default(context)

    return handler


class _OnceHandler(logging.Handler):
    """websockets' server log, errors only, each kind once and in one line (no traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: set = set()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        detail = f": {type(exc).__name__}: {str(exc)[:200]}" if exc is not None else ""
        line = f"viewer: {record.getMessage()}{detail} (shown once)"
        say_once(self.seen, (record.getMessage(), type(exc).__name__), line)


def _once_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(h, _OnceHandler) for h in logger.handlers):
        logger.addHandler(_OnceHandler())
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    return logger


def guarded_server(
    viser: Any, host: str, port: int, share: bool, token: str | None = None, max_connections: int = 16
) -> Any:
    """A ``viser.ViserServer`` whose websocket handshakes pass ``origin_allowed`` first.

    ``token``: handshakes must also open ``/<token>``, and the page is served at that path only (its
    scripts open the websocket on the page's path); ``/`` answers 403 with a line saying why.

    viser 1.1.1 builds its websockets server inside ``ViserServer.__init__`` (on a thread, with
    ``websockets.asyncio.server.serve(..., process_request=<its static-file server>)``) and offers
    no hook. For the duration of that call only, ``serve`` gets a ``process_request`` that answers a
    foreign Origin with 403 and hands everything else to viser's own; a connection beyond
    ``max_connections`` open ones (page loads and websockets) is closed as soon as it is accepted; its
    event loop's errors and its log print once, in one line. If viser stops building its server that
    way, the viewer refuses to start rather than run unguarded.
    """
    import asyncio
    import http

    import websockets.asyncio.server as ws_server

    original_serve = ws_server.serve
    used = []

    refused: set = set()

    class CappedConnection(ws_server.ServerConnection):
        """Closed as soon as it is accepted when ``max_connections`` are open already: a client that connects
        and sends nothing would otherwise hold a file descriptor until the handshake times out."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)  # registers it in server.handlers, which counts every open one
            if len(self.server.handlers) > max_connections:
                say_once(refused, "cap", f"viewer: refused a connection: {max_connections} are open, the most "
                         "allowed; further refusals are not shown")  # fmt: skip
                transport.abort()

    def guarded_serve(*args: Any, **kwargs: Any) -> Any:
        inner = kwargs.get("process_request")
        loop = asyncio.get_running_loop()  # viser calls serve inside its server thread's event loop
        loop.set_exception_handler(loop_errors_once(loop.default_exception_handler))

        def process_request(connection: Any, request: Any) -> Any:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                origin = request.headers.get("Origin")
                bound = connection.local_address[1]
                if not origin_allowed(origin, host, bound):
                    print(f"viewer: refused a connection from {origin[:200]!r} (not this viewer's page)",
                          file=sys.stderr, flush=True)  # fmt: skip
                    return connection.respond(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")
                if token is not None and not token_ok(request.path, token):
                    print("viewer: refused a connection without the URL's token", file=sys.stderr, flush=True)
                    return connection.respond(http.HTTPStatus.FORBIDDEN, "Token required\n")
            elif token is not None:
                path = request.path.partition("?")[0]
                if token_ok(path, token):  # the page itself, served as viser serves "/"
                    request = dataclasses.replace(request, path="/")
                elif path in ("/", "/index.html"):
                    return connection.respond(
                        http.HTTPStatus.FORBIDDEN, "Open the URL with the token that was printed at start\n"
                    )
            return inner(connection, request) if inner is not None else None

        kwargs["process_request"] = process_request
        kwargs["logger"] = _once_logger("splatvlm.viewer.websockets")
        kwargs["create_connection"] = CappedConnection
        kwargs["backlog"] = max_connections  # also how many asyncio accepts in one go, before any is closed
        used.append(True)
        return original_serve(*args, **kwargs)

    with _SERVE_PATCH:
        ws_server.serve = guarded_serve
        try:
            server = viser.ViserServer(host=host, port=port, verbose=False)
        finally:
            ws_server.serve = original_serve
    if not used:
        server.stop()
        raise SplatVLMError(
            f"viser {viser.__version__} did not start its server through websockets.serve; the viewer cannot "
            "check Origin headers, so it is not started"
        )
    if not share:
        from viser import _messages

        ws = server._websock_server
        with contextlib.suppress(AssertionError, KeyError):
            ws.unregister_handler(_messages.ShareUrlRequest)

        def ignore_share(client_id: int, message: Any) -> None:
            print("viewer: ignored a request to share this viewer publicly (pass --viewer-share to allow it)",
                  file=sys.stderr, flush=True)  # fmt: skip

        ws.register_handler(_messages.ShareUrlRequest, ignore_share)
        with contextlib.suppress(Exception):  # only cosmetic: the request itself is ignored above
            server.gui.configure_theme(show_share_button=False)
    return server
