"""Bounded, polite fetching of one URL: the HTTP client behind the download stage.

Every fetch is bounded: connect/read timeouts per attempt, and a deadline per attempt
(`total_timeout_s`, all redirect hops included) that holds whatever the server does: a
watchdog shuts the socket down when it passes, so slow headers, a body dripping one byte at
a time, or a body that never ends all stop at the deadline. Also a byte cap that aborts the
transfer (never reads it all), a redirect limit with the scheme checked at every hop
(http/https only), host allow/deny lists, and no connection to a private, loopback,
link-local, multicast or reserved address unless the recipe opts in (curate.security.AddressPolicy:
the check is on the address the socket connects to, resolved once per connection, redirect hops
included, so neither a public name that resolves to 10.0.0.1 nor a DNS answer that changes between
check and connect gets through; `private_address`, never retried). Retries with exponential backoff and jitter happen
only for retryable failures: timeouts (but not an attempt that ran into its deadline: a
server that slow would only hold a worker slot again), connection resets and refusals,
truncated bodies, 429 and 5xx. The content type is sniffed from the bytes
(magic numbers), never taken from the headers.

One `Fetcher` holds one urllib3 connection pool and a semaphore per host; it is shared by
the threads of a download worker.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import random
import socket
import threading
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from curate.security import NETWORK_SCHEMES, AddressPolicy

USER_AGENT = "omnicurate/0.1 (+https://github.com/omnicurate/omnicurate)"
RETRYABLE = {"timeout", "connection_error", "truncated", "http_429", "http_error"}


@dataclasses.dataclass
class FetchResult:
    url: str
    ok: bool
    reason: str = ""  # "" when ok; else a reject reason (timeout, http_404, too_large, ...)
    error: str = ""
    code: int | None = None
    data: bytes = b""
    kind: str | None = None  # image | video | audio, sniffed from the bytes
    mime: str | None = None
    ext: str | None = None
    elapsed: float = 0.0
    attempts: int = 0
    final_url: str = ""

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, code: int | None = None, final: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.code = reason, code
        self.final = final  # not worth retrying, whatever the reason


# ---------------------------------------------------------------------------- the deadline
_attempt_watch = threading.local()


class Deadline:
    """One attempt's deadline. At expiry a timer shuts down every socket the attempt used, so a
    blocking read returns at once however slowly the server drips bytes (a read timeout alone
    never fires while bytes keep coming)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)

    def __enter__(self) -> "Deadline":
        self._timer.start()
        _attempt_watch.deadline = self
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        _attempt_watch.deadline = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watched:
    """Connection mixin: hands the socket to the calling thread's deadline before waiting for headers."""

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_attempt_watch, "deadline", None)
        if deadline is not None:
            deadline.watch(getattr(self, "sock", None))
        return super().getresponse(*args, **kwargs)


class AddressRefused(Exception):
    """Every address a host resolves to is refused by the AddressPolicy (not an OSError, so
    urllib3 hands it up unchanged instead of retrying or wrapping it)."""


class _Guarded:
    """Connection mixin: resolves the host once, refuses the addresses the policy refuses and
    connects to exactly the addresses it checked (TLS still verifies the certificate against the
    host name). Mirrors urllib3.util.connection.create_connection otherwise."""

    def __init__(self, *args: Any, policy: AddressPolicy | None = None, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        if self.policy is None:
            return super()._new_conn()
        host = self._dns_host.strip("[]")
        try:
            found = socket.getaddrinfo(host, self.port, urllib3.util.connection.allowed_gai_family(),
                                       socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise urllib3.exceptions.NameResolutionError(self.host, self, e) from e
        allowed, refused = [], []
        for res in found:
            why = self.policy.refusal(res[4][0])
            if why:
                refused.append(f"{res[4][0]} ({why})")
            else:
                allowed.append(res)
        if not allowed:
            raise AddressRefused(f"{self.host} resolves to {', '.join(dict.fromkeys(refused)) or 'nothing'}: "
                                 f"not fetched (stages.download.allow_private / allow_networks opt in)")
        err: OSError | None = None
        for *_, sockaddr in allowed:  # an IP literal: create_connection does no DNS lookup for it
            try:
                return urllib3.util.connection.create_connection(
                    (sockaddr[0], self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except OSError as e:
                err = e
        if isinstance(err, TimeoutError):
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from err
        raise urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {err}") from err


class _HTTPConnection(_Watched, _Guarded, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, _Guarded, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


# ---------------------------------------------------------------------------- sniffing
def sniff(data: bytes) -> tuple[str, str, str] | None:
    """(kind, mime, ext) from magic numbers, or None when the bytes are no known media."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png", ".png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "image/gif", ".gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "image/webp", ".webp"
    if head.startswith(b"BM"):
        return "image", "image/bmp", ".bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "image/tiff", ".tif"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "audio/wav", ".wav"
    if head.startswith(b"fLaC"):
        return "audio", "audio/flac", ".flac"
    if head.startswith(b"OggS"):
        return "audio", "audio/ogg", ".ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio", "audio/mpeg", ".mp3"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio", "audio/mp4", ".m4a"
        return "video", "video/quicktime" if brand == b"qt  " else "video/mp4", ".mov" if brand == b"qt  " else ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "video/webm", ".webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "video/x-msvideo", ".avi"
    return None


def host_matches(host: str, patterns: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == p.lower() or host.endswith("." + p.lower()) for p in patterns)


# ---------------------------------------------------------------------------- the fetcher
class Fetcher:
    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 10.0, total_timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.5, max_bytes: int = 64 << 20, max_redirects: int = 5,
                 allow_hosts: list[str] | None = None, deny_hosts: list[str] | None = None,
                 per_host: int = 4, pool_size: int = 16, user_agent: str = USER_AGENT,
                 fsspec_options: dict[str, Any] | None = None, allow_private: bool = False,
                 allow_networks: list[str] | None = None) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.total_timeout = total_timeout
        self.retries, self.backoff = retries, backoff
        self.max_bytes, self.max_redirects = max_bytes, max_redirects
        self.allow_hosts, self.deny_hosts = allow_hosts, deny_hosts or []
        self.per_host = per_host
        self.user_agent = user_agent
        self.fsspec_options = fsspec_options or {}
        self.policy = AddressPolicy.from_config(allow_private, allow_networks)
        self.pool = urllib3.PoolManager(num_pools=64, maxsize=pool_size, retries=False, block=False)
        # every connection of every pool checks its peer address against the policy
        self.pool.pool_classes_by_scheme = {"http": functools.partial(_HTTPPool, policy=self.policy),
                                            "https": functools.partial(_HTTPSPool, policy=self.policy)}
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def _host_slot(self, host: str) -> threading.Semaphore:
        with self._lock:
            return self._hosts.setdefault(host, threading.Semaphore(self.per_host))

    def fetch(self, url: str) -> FetchResult:
        """Fetch with retries; never raises for a bad URL or server."""
        start = time.monotonic()
        result = FetchResult(url=url, ok=False)
        for attempt in range(self.retries + 1):
            result.attempts = attempt + 1
            try:
                data, code, final = self._attempt(url)
            except FetchError as e:
                result.reason, result.error, result.code = e.reason, str(e), e.code
                if e.reason not in RETRYABLE or e.final or attempt == self.retries:
                    break
                # exponential backoff with jitter; deterministic per URL and attempt
                jitter = random.Random(f"{url}#{attempt}").random()
                time.sleep(self.backoff * (2 ** attempt) * (0.5 + jitter))
                continue
            sniffed = sniff(data)
            result.code, result.final_url = code, final
            if sniffed is None:
                result.reason, result.error = "not_media", f"{len(data)} bytes are no known image/video/audio format"
                break
            result.ok, result.reason, result.error = True, "", ""
            result.data = data
            result.kind, result.mime, result.ext = sniffed
            break
        result.elapsed = round(time.monotonic() - start, 4)
        return result

    def _check_url(self, url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in NETWORK_SCHEMES:
            raise FetchError("bad_scheme", f"scheme '{scheme}' is not fetched (http, https, s3, gs)")
        host = (parts.hostname or "").lower()
        if not host:
            raise FetchError("bad_url", f"no host in {url!r}")
        if host_matches(host, self.deny_hosts):
            raise FetchError("host_denied", f"host {host} is in stages.download.deny_hosts")
        if self.allow_hosts is not None and not host_matches(host, self.allow_hosts):
            raise FetchError("host_denied", f"host {host} is not in stages.download.allow_hosts")
        return scheme, host

    def _attempt(self, url: str) -> tuple[bytes, int | None, str]:
        with Deadline(self.total_timeout) as deadline:
            try:
                return self._follow(url, deadline)
            except FetchError as e:
                if deadline.expired:  # whatever broke, it broke because the deadline shut the socket
                    raise FetchError("timeout", f"no complete answer within total_timeout_s={self.total_timeout} "
                                                f"(stages.download.total_timeout_s)", e.code, final=True) from None
                raise

    def _follow(self, url: str, deadline: Deadline) -> tuple[bytes, int | None, str]:
        seen = {url}
        current = url
        for _ in range(self.max_redirects + 1):
            scheme, host = self._check_url(current)
            if scheme not in ("http", "https"):
                return self._fetch_object_store(current), None, current
            with self._host_slot(host):
                location, data, code = self._http_once(current, deadline)
            if location is None:
                return data, code, current
            nxt = urljoin(current, location)
            if urlsplit(nxt).scheme.lower() not in ("http", "https"):
                raise FetchError("bad_redirect_scheme", f"redirect from {current} to {nxt} (only http/https)", code)
            if nxt in seen:
                raise FetchError("redirect_loop", f"redirect loop: {current} -> {nxt}", code)
            seen.add(nxt)
            current = nxt
        raise FetchError("redirect_loop", f"more than {self.max_redirects} redirects (stages.download.max_redirects)")

    def _http_once(self, url: str, deadline: Deadline) -> tuple[str | None, bytes, int]:
        left = deadline.remaining()
        if left <= 0:
            raise FetchError("timeout", "deadline passed before the request", final=True)
        timeout = urllib3.Timeout(connect=min(self.connect_timeout, left), read=min(self.read_timeout, left))
        try:
            resp = self.pool.request("GET", url, headers={"User-Agent": self.user_agent}, redirect=False,
                                     preload_content=False, timeout=timeout, retries=False)
        except AddressRefused as e:
            raise FetchError("private_address", f"{url}: {e}", final=True) from None
        except urllib3.exceptions.NewConnectionError as e:  # refused, unreachable (a TimeoutError subclass)
            raise FetchError("connection_error", f"cannot connect: {e}") from None
        except urllib3.exceptions.TimeoutError as e:
            raise FetchError("timeout", f"timed out connecting or waiting for headers: {e}") from None
        except urllib3.exceptions.HTTPError as e:
            raise FetchError("connection_error", f"{type(e).__name__}: {e}") from None
        done = False  # the body was read to its end: the connection may go back to the pool
        try:
            code = resp.status
            if code in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise FetchError("http_error", f"redirect {code} without Location", code)
                return location, b"", code
            if code == 429:
                raise FetchError("http_429", "429 Too Many Requests", code)
            if code >= 500:
                raise FetchError("http_error", f"server error {code}", code)
            if code >= 400:
                raise FetchError(f"http_{code}", f"client error {code}", code)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise FetchError("too_large",
                                 f"Content-Length {length} > stages.download.max_bytes={self.max_bytes}", code)
            buf = io.BytesIO()
            while chunk := resp.read1(1 << 16):  # whatever has arrived, not a full 64 KiB
                buf.write(chunk)
                if buf.tell() > self.max_bytes:
                    raise FetchError("too_large", f"more than stages.download.max_bytes={self.max_bytes} bytes", code)
                if deadline.remaining() <= 0:
                    raise FetchError("timeout", f"transfer took longer than total_timeout_s={self.total_timeout}",
                                     code, final=True)
            if deadline.expired:  # the watchdog shut the socket: what arrived is a cut-off body
                raise FetchError("timeout", f"transfer took longer than total_timeout_s={self.total_timeout}",
                                 code, final=True)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and buf.tell() < int(length):
                raise FetchError("truncated", f"got {buf.tell()} of {length} bytes", code)
            done = True
            return None, buf.getvalue(), code
        except urllib3.exceptions.ProtocolError as e:
            text = str(e)
            reason = "truncated" if "IncompleteRead" in text or "incomplete" in text.lower() else "connection_error"
            raise FetchError(reason, f"{type(e).__name__}: {text[:300]}") from None
        except urllib3.exceptions.TimeoutError as e:
            raise FetchError("timeout", f"read timed out: {e}") from None
        except urllib3.exceptions.HTTPError as e:
            raise FetchError("connection_error", f"{type(e).__name__}: {e}") from None
        finally:
            if done:
                resp.release_conn()
            else:  # unread bytes would poison the next request on this connection: drop it
                resp.close()

    def _fetch_object_store(self, url: str) -> bytes:
        try:
            import fsspec

            with fsspec.open(url, "rb", **self.fsspec_options) as f:
                data = f.read(self.max_bytes + 1)
        except ImportError as e:
            raise FetchError("bad_scheme", f"{url}: the file system for this scheme is not installed ({e})") from None
        except FileNotFoundError as e:
            raise FetchError("http_404", f"{url}: not found ({e})") from None
        except Exception as e:  # network/auth failures of the object store
            raise FetchError("connection_error", f"{url}: {type(e).__name__}: {e}") from None
        if len(data) > self.max_bytes:
            raise FetchError("too_large", f"more than stages.download.max_bytes={self.max_bytes} bytes")
        return data


def resize_image(data: bytes, max_side: int, quality: int) -> tuple[bytes, str, str] | None:
    """Re-encode an image whose longer side exceeds max_side as JPEG; None when unchanged.

    JPEG sources are decoded in draft mode (the decoder scales by 1/2..1/8 while reading),
    which is most of the saving over a full decode + resize.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if max(img.size) <= max_side:
            return None
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
    return out.getvalue(), "image/jpeg", ".jpg"


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()
