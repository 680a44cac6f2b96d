"""What the terminal shows while a recipe runs: one live line per stage, then its summary.

The runner tells a view when a stage starts (its expected rows, and for a model stage its
model, Stage.model_label, and device, from the resources the runner granted it), where
its output is being written, and when it is done (its marker). The view counts rows done
by reading the row counts in the footers of the Parquet files already written there (a
thread polls the folder; nothing in the Ray plan changes), so it works for every stage.

  TTY stdout      a `rich` live line: rows done / total, rows/s, elapsed, ETA; then the summary
  other stdout    the summary line per stage only (plus a plain progress line every minute of a
                  long stage), so CI and `ray job submit` logs stay short
  quiet           nothing but errors (they are raised, not printed, by the runner)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

PLAIN_EVERY_S = 60.0


def count_rows(folder: Path | None) -> int:
    """Rows in the Parquet files written so far under `folder` (files still being written are skipped)."""
    if folder is None or not folder.exists():
        return 0
    import pyarrow.parquet as pq

    n = 0
    try:
        paths = list(folder.rglob("*.parquet"))
    except OSError:  # the stage renamed its temp folder while we listed it: counted on the next poll
        return 0
    for path in paths:
        try:
            n += pq.read_metadata(path).num_rows
        except Exception:  # noqa: BLE001 - half-written or renamed file: counted on the next poll
            continue
    return n


def summary_line(marker: dict[str, Any], model: str | None = None, device: str | None = None) -> str:
    rejected = sum((marker.get("rejected") or {}).values())
    seconds = float(marker.get("seconds") or 0.0)
    rate = f", {marker['rows'] / seconds:,.0f} rows/s" if seconds > 0 and marker.get("rows") else ""
    what = f" [{model} on {device}]" if model else ""
    line = (f"stage {marker['stage']}{what}: {marker.get('rows', 0):,} rows, {marker.get('kept', 0):,} kept, "
            f"{rejected:,} rejected in {seconds:.1f}s{rate}")
    if marker.get("skipped"):
        line += f" (skipped: {marker['skipped']})"
    return line


def _eta(done: int, total: int | None, elapsed: float) -> str:
    if not total or not done or done >= total:
        return ""
    return f", ETA {(total - done) * elapsed / done:.0f}s"


class ProgressView:
    """Base view: plain lines on a stream (the non-terminal case)."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, poll_s: float = 0.5) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.poll_s = poll_s
        self._stage: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.lines: list[str] = []  # what was printed (tests read it)

    # ---- the runner's interface
    def stage_started(self, name: str, total_rows: int | None = None, model: str | None = None,
                      device: str | None = None, output: Path | None = None) -> None:
        self._stage = {"name": name, "total": total_rows, "model": model, "device": device,
                       "output": Path(output) if output else None, "start": time.monotonic(), "done": 0,
                       "last_plain": time.monotonic()}
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"progress-{name}", daemon=True)
        self._thread.start()
        self.on_start()

    def stage_finished(self, marker: dict[str, Any]) -> None:
        self._halt()
        stage = self._stage or {}
        self.on_finish(summary_line(marker, stage.get("model"), stage.get("device")))
        self._stage = None

    def stage_resumed(self, marker: dict[str, Any]) -> None:
        self.emit(f"stage {marker['stage']}: done in an earlier run, {marker.get('rows', 0):,} rows "
                  f"({marker.get('kept', 0):,} kept)")

    def message(self, text: str) -> None:
        self.emit(text)

    def close(self) -> None:
        self._halt()

    # ---- the live part
    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            stage = self._stage
            if stage is None:
                return
            stage["done"] = count_rows(stage["output"])
            self.on_progress(stage)

    def progress_text(self, stage: dict[str, Any]) -> str:
        elapsed = time.monotonic() - stage["start"]
        done, total = stage["done"], stage["total"]
        what = f" [{stage['model']} on {stage['device']}]" if stage["model"] else ""
        count = f"{done:,}/{total:,} rows" if total else f"{done:,} rows"
        rate = f", {done / elapsed:,.0f} rows/s" if elapsed > 0 and done else ""
        return f"stage {stage['name']}{what}: {count}{rate}, {elapsed:.0f}s{_eta(done, total, elapsed)}"

    # ---- how a view shows it (plain lines here)
    def emit(self, line: str) -> None:
        if self.quiet:
            return
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def on_start(self) -> None:
        pass

    def on_progress(self, stage: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - stage["last_plain"] >= PLAIN_EVERY_S:
            stage["last_plain"] = now
            self.emit(self.progress_text(stage) + " ...")

    def on_finish(self, line: str) -> None:
        self.emit(line)


class RichView(ProgressView):
    """A terminal: a live line per running stage (rich), replaced by its summary when done."""

    def __init__(self, stream: TextIO | None = None, poll_s: float = 0.25) -> None:
        super().__init__(stream, quiet=False, poll_s=poll_s)
        from rich.console import Console

        self.console = Console(file=self.stream, highlight=False)
        self._live = None

    def on_start(self) -> None:
        from rich.live import Live
        from rich.text import Text

        self._live = Live(Text(self.progress_text(self._stage)), console=self.console, transient=True,
                          refresh_per_second=4)
        self._live.start()

    def on_progress(self, stage: dict[str, Any]) -> None:
        from rich.text import Text

        if self._live is not None:
            self._live.update(Text(self.progress_text(stage)))

    def on_finish(self, line: str) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.lines.append(line)
        self.console.print(line, markup=False, soft_wrap=True)

    def emit(self, line: str) -> None:
        self.lines.append(line)
        self.console.print(line, markup=False, soft_wrap=True)

    def close(self) -> None:
        super().close()
        if self._live is not None:
            self._live.stop()
            self._live = None


def make_view(mode: str = "auto", stream: TextIO | None = None) -> ProgressView:
    """`quiet`: errors only; otherwise a rich live view on a terminal, plain lines elsewhere."""
    stream = stream or sys.stdout
    if mode == "quiet":
        return ProgressView(stream, quiet=True)
    if stream.isatty():
        return RichView(stream)
    return ProgressView(stream)


class quiet_terminal:
    """Send what Ray prints to a log file for a while: file descriptor 2 and Python's `sys.stdout`.

    Ray's core writes warnings to fd 2 directly, so replacing `sys.stderr` is not enough; the
    driver prints raylet warnings with `print(..., file=sys.stdout)` looked up at call time, so
    `sys.stdout` is swapped too (fd 1 is left alone: the progress view keeps the stream it was
    given). Both are restored on exit, before any error reaches the user. `None`: no change.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._saved: int | None = None
        self._stdout: TextIO | None = None
        self._log: TextIO | None = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> quiet_terminal:
        if self.path is None:
            return self
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        sys.stdout.flush()
        self._saved = os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        self._log = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self._stdout, sys.stdout = sys.stdout, self._log
        self._handlers = [(h, h.setStream(self._log)) for h in logging.getLogger().handlers  # our own log lines
                          if type(h) is logging.StreamHandler and h.stream in (sys.stderr, self._stdout)]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        import os

        for handler, stream in self._handlers:
            handler.setStream(stream)
        sys.stdout = self._stdout
        self._log.close()
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
