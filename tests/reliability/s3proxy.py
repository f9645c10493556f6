"""A fault-injecting HTTP proxy in front of the moto S3 server.

Point ``s3_endpoint_url`` at :attr:`FaultProxy.url`; every request is forwarded to moto unless
``fault(method, path)`` returns an action for it:

- ``("status", code, s3_error_code)``: answer with that HTTP status and an S3 error body; with a
  fourth element ``True`` the body also names the request's access key id, as AWS does for
  ``InvalidAccessKeyId`` and ``SignatureDoesNotMatch``;
- ``"reset"``: read the request, then reset the connection (as a server that went away does);
- ``("hold", event)``: keep the request waiting until ``event`` is set, then reset it.

The proxy counts what it did in :attr:`injected` and every request in :attr:`seen`.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def s3_error(code: str, message: str, access_key: str | None = None) -> bytes:
    extra = f"<AWSAccessKeyId>{access_key}</AWSAccessKeyId>" if access_key else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"{extra}<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


def access_key_of(authorization: str) -> str:
    """The access key id in a SigV4 Authorization header (``... Credential=KEY/date/...``)."""
    return authorization.split("Credential=", 1)[-1].split("/", 1)[0]


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fault: Callable[[str, str], object] = lambda method, path: None
        self.injected: Counter = Counter()
        self.seen: Counter = Counter()
        self.held = threading.Event()  # set once a request is being held
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                self.close_connection = True
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                method = self.command
                with proxy._lock:
                    proxy.seen[method] += 1
                    action = proxy.fault(method, self.path)
                    if action is not None:
                        proxy.injected[action if isinstance(action, str) else action[0]] += 1
                if action == "reset":
                    self._reset()
                    return
                if isinstance(action, tuple) and action[0] == "hold":
                    proxy.held.set()
                    action[1].wait(120)
                    self._reset()
                    return
                if isinstance(action, tuple) and action[0] == "status":
                    key = (
                        access_key_of(self.headers.get("Authorization", ""))
                        if action[3:] == (True,)
                        else None
                    )
                    payload = s3_error(action[2], f"injected by the test proxy ({action[1]})", key)
                    self.send_response(action[1])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS
                    }
                    headers["Content-Length"] = str(len(body))
                    upstream.request(method, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                            self.send_header(key, value)
                    length = (
                        response.getheader("Content-Length")
                        if method == "HEAD"
                        else str(len(payload))
                    )
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
