"""A web server on this machine playing a resident's photo host, for the tests of Open311's
`media_url` (tests/test_intake_media.py, tests/test_intake_open311.py): a real HTTP server on
loopback, reached by name (`localhost`, which a test allows) or by number (127.0.0.1, refused).

Paths: /photo-*.jpg a JPEG (another colour for each path, photos are kept by content), /notes.txt
text, /missing 404, /slow an answer that never comes in time, /huge a body without a length that
does not end, /huge-declared a Content-Length over any limit, /chain/N N redirects before a photo,
/to-loopback a redirect to this server by number, /to-ftp a redirect to ftp, /relative a relative
redirect (the query string is ignored). Every request is noted (path with its query string, and
the Host header) in `hits`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.loopback import QuietHandler, serving
from tests.test_photos import jpeg, unique_color

SLOW_SECONDS = 8  # longer than any media timeout a test sets


class MediaServer:
    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []
        self.photos: dict[str, bytes] = {}
        self.port = 0  # set when served

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def photo(self, path: str) -> bytes:
        return self.photos.setdefault(path, jpeg(color=unique_color()))

    def paths(self) -> list[str]:
        return [p for p, _ in self.hits]


@contextlib.contextmanager
def media_server() -> Iterator[MediaServer]:
    media = MediaServer()
    with serving(_handler(media)) as server:
        media.port = server.server_port
        yield media


def _handler(media: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # the standard library names it
            media.hits.append((self.path, self.headers.get("Host", "")))
            path = urlsplit(self.path).path  # what is served; the query string is the client's
            if path.startswith("/photo"):
                self._send(200, media.photo(self.path), "image/jpeg")
            elif path == "/notes.txt":
                self._send(200, "这不是照片".encode(), "text/plain; charset=utf-8")
            elif path == "/slow":
                time.sleep(SLOW_SECONDS)
                self._send(200, media.photo("/photo-slow.jpg"), "image/jpeg")
            elif path == "/huge":
                self._endless()
            elif path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(b"\xff\xd8\xff" + bytes(1024))
            elif path.startswith("/chain/"):
                left = int(path.removeprefix("/chain/"))
                self._redirect(f"/chain/{left - 1}" if left > 1 else "/photo-chain.jpg")
            elif path == "/to-loopback":
                self._redirect(media.url("/photo-redirected.jpg", host="127.0.0.1"))
            elif path == "/to-ftp":
                self._redirect(f"ftp://localhost:{media.port}/photo.jpg")
            elif path == "/relative":
                self._redirect("photo-relative.jpg")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _endless(self) -> None:
            """A JPEG's first bytes, then zeros until the client hangs up (or a gigabyte)."""
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = bytes(64 * 1024)
            with contextlib.suppress(OSError):
                self.wfile.write(b"\xff\xd8\xff")
                for _ in range(16 * 1024):
                    self.wfile.write(chunk)

    return Handler
