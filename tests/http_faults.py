"""A loopback HTTP server (127.0.0.1, random port) with good files and faulty routes.

Routes: /img/<name> (good JPEG), /wrongtype.jpg (JPEG served as text/html), /notmedia
(HTML served as image/jpeg), /404, /flaky (500 once, then the image), /always500, /slow
(drips past the read timeout), /drip, /slowheaders, /endless (bytes keep coming, never done),
/big (larger than the byte cap), /loop (redirect loop), /tofile (redirect to file://),
/redirect (to a good image), /truncated (Content-Length larger than the body),
/reset (connection reset), /goto/<url> (redirect to that URL). `hits` counts requests per path.
The download stage refuses loopback addresses by default: a Fetcher pointed at this server needs
`allow_private=True` or `allow_networks=["127.0.0.0/8"]` (stages.download.allow_private).
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (640, 480)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (seed * 37 % 256, 120, 200))
    ImageDraw.Draw(img).rectangle([10, 10, 100 + seed % 200, 100], fill=(255, 255, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


class FaultServer:
    def __init__(self, images: dict[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.images = images or {f"{i}.jpg": jpeg_bytes(i) for i in range(4)}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def send_body(self, code: int, body: bytes, ctype: str = "image/jpeg") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, to: str) -> None:
                self.send_response(302)
                self.send_header("Location", to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                    n = server.hits[path]
                img = server.images["0.jpg"]
                if path.startswith("/img/") and path[5:] in server.images:
                    self.send_body(200, server.images[path[5:]])
                elif path == "/wrongtype.jpg":
                    self.send_body(200, img, "text/html")
                elif path == "/notmedia":
                    self.send_body(200, b"<html><body>not an image</body></html>", "image/jpeg")
                elif path == "/flaky":
                    self.send_body(500, b"oops", "text/plain") if n == 1 else self.send_body(200, img)
                elif path == "/always500":
                    self.send_body(503, b"down", "text/plain")
                elif path == "/drip":  # a byte every 0.1 s: faster than any read timeout, never done
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(600):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                elif path == "/slowheaders":  # the status line and headers, one byte every 0.1 s
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"p" * 600:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.1)
                elif path == "/endless":  # a body with no length that never ends
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    for _ in range(1200):
                        self.wfile.write(b"\xff" * 100)
                        self.wfile.flush()
                        time.sleep(0.05)
                elif path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(20):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.5)
                elif path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()  # no Content-Length: the cap must stop the stream
                    try:
                        for _ in range(200):
                            self.wfile.write(img[:4] + b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                elif path in ("/loop", "/loop2"):
                    self.redirect("/loop2" if path == "/loop" else "/loop")
                elif path == "/tofile":
                    self.redirect("file:///etc/passwd")
                elif path == "/redirect":
                    self.redirect("/img/1.jpg")
                elif path.startswith("/goto/"):
                    self.redirect(path[len("/goto/"):])
                elif path == "/truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(img) + 5000))
                    self.end_headers()
                    self.wfile.write(img[:200])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif path == "/reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                else:
                    self.send_body(404, b"no", "text/plain")

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # clients that hang up on /slow, /big, /reset are the point of those routes

        self.host = host
        self.httpd = QuietServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
