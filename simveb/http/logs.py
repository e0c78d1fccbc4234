"""Structured logs: one JSON object per line on stderr, with the request id of the current request.

Records are handed to one writer thread, which formats them and writes them in batches: a request
never waits for a write to stderr (a pipe, a terminal or a file on a slow disk), and a busy server
makes one write call for many lines instead of one (with a flush) per line. The calling thread only
freezes what the record must keep (message text, request id, exception text) and queues it.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import IO

import msgspec

# The runtime's request id: the shell sets it, the bus carries it into actors (and their log lines).
from simveb.bus import current_request_id as request_id_var

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, request_id, the `extra` fields, exc."""

    def __init__(self) -> None:
        super().__init__()
        # (second, "YYYY-MM-DDTHH:MM:SS") of the last record: the date is formatted once a second.
        self._second: tuple[int, str] = (0, "")

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        created = record.created
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        entry = {
            "ts": f"{cached[1]}.{int((created - second) * 1000):03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Set by BackgroundHandler in the thread that logged (the writer thread has no request context).
        rid = fields.get("request_id", request_id_var.get())
        if rid:
            entry["request_id"] = rid
        for key in [k for k in fields if k not in _STANDARD]:
            if key[0] != "_":
                entry[key] = fields[key]
        if record.exc_text:
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode(errors="replace")


# The attributes every LogRecord has, with the values a record made without a caller gets; thread
# and process names are not looked up (None), the process id is kept.
_BLANK = {
    **logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__,
    "thread": None,
    "threadName": None,
    "processName": None,
}
_new_record = logging.LogRecord.__new__


def quick_record(name: str, level: int, msg: str, extra: dict[str, object]) -> logging.LogRecord:
    """A complete LogRecord for `Logger.handle`, made in about a fifth of the time of the constructor.

    For the access line, written once per request: LogRecord.__init__ also looks up the current
    thread, process and source file, which no handler of ours reads. `msg` is final (no args).
    """
    now = time.time()
    record = _new_record(logging.LogRecord)
    fields = record.__dict__
    fields.update(_BLANK)
    fields["name"] = name
    fields["msg"] = msg
    fields["levelno"] = level
    fields["levelname"] = logging.getLevelName(level)
    fields["created"] = now
    fields["msecs"] = (now - int(now)) * 1000
    fields["relativeCreated"] = (now - _START) * 1000
    fields["process"] = _PID[0]
    fields.update(extra)
    return record


_START = logging._startTime  # type: ignore[attr-defined]
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class AccessEntry(msgspec.Struct, frozen=True, array_like=True):
    """One request's access line as plain values, formatted by the writer thread."""

    created: float
    method: str
    path: str
    status: int
    duration_ms: float
    route: str
    request_id: str


class _AccessLine(msgspec.Struct, frozen=True, kw_only=True):
    # The same fields, in the same order, as JsonFormatter gives an access LogRecord.
    ts: str
    level: str = "info"
    logger: str = "simveb.access"
    msg: str
    request_id: str
    status: int
    duration_ms: float
    route: str


_access_logger = logging.getLogger("simveb.access")
_root_logger = logging.getLogger("simveb")


def access_writer() -> BackgroundHandler | None:
    """The writer that may take access lines directly, or None when they must be LogRecords.

    Direct only in the plain configuration (configure_logging's writer is the one handler on the way
    of `simveb.access`, no filters): a handler or filter added anywhere on that way (a test capture,
    a shipper of access logs) gets real LogRecords, as from any logger.
    """
    handlers = _root_logger.handlers
    if (
        len(handlers) == 1
        and type(handlers[0]) is BackgroundHandler
        and not _access_logger.handlers
        and not _access_logger.filters
        and not _root_logger.filters
        and _access_logger.propagate
    ):
        return handlers[0]
    return None


class BackgroundHandler(logging.Handler):
    """Queues records for a writer thread that formats and writes them in batches.

    Bounded: past `max_pending` queued records (the stream is stuck), new records are dropped and
    counted in `dropped` rather than growing memory without limit; the next write says how many.
    """

    def __init__(self, stream: IO[str], *, max_pending: int = 100_000, linger_s: float = 0.005) -> None:
        super().__init__()
        self._second: tuple[int, str] = (0, "")
        self.stream = stream
        self.max_pending = max_pending
        self.linger_s = linger_s
        self.dropped = 0
        self._start()
        # A forked child (granian workers) inherits this handler but not its thread: give it its own.
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (h := me()) is not None and h._start())

    def _start(self) -> None:
        # Records, and threading.Events to set once everything queued before them is written (flush).
        self._queue: queue.SimpleQueue[logging.LogRecord | AccessEntry | threading.Event] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="simveb-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        # Freeze what may change or is only known here: the message text (its args may be mutable),
        # the request id (a context variable of this thread) and the traceback text.
        try:
            record.msg = record.getMessage()
        except Exception:
            self.handleError(record)
            return
        record.args = None
        if "request_id" not in record.__dict__:
            record.request_id = request_id_var.get()
        if record.exc_info and not record.exc_text:
            record.exc_text = (self.formatter or JsonFormatter()).formatException(record.exc_info)
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            # Let a burst accumulate: one write for many lines (a line waits at most linger_s).
            if not isinstance(item, threading.Event):
                time.sleep(self.linger_s)
            batch: list[logging.LogRecord | AccessEntry] = []
            while True:
                if isinstance(item, threading.Event):
                    self._write(batch)
                    batch = []
                    item.set()
                else:
                    batch.append(item)
                if len(batch) >= 5000:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)

    def access(self, entry: AccessEntry) -> None:
        """Queue an access line as plain values (see `access_writer`): no LogRecord, no formatter."""
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._queue.put(entry)

    def _write(self, batch: list[logging.LogRecord | AccessEntry]) -> None:
        lines = []
        for record in batch:
            if type(record) is AccessEntry:
                lines.append(self._access_line(record))
                continue
            try:
                lines.append(self.format(record))  # type: ignore[arg-type]
            except Exception:
                self.handleError(record)  # type: ignore[arg-type]
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            lines.append(
                _encoder.encode(
                    {
                        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                        "level": "warning",
                        "logger": "simveb.logs",
                        "msg": f"{dropped} log records dropped: the log stream did not keep up",
                    }
                ).decode()
            )
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "writing the log lines failed"}))

    def _access_line(self, entry: AccessEntry) -> str:
        created = entry.created
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        line = _AccessLine(
            ts=f"{cached[1]}.{int((created - second) * 1000):03d}+00:00",
            msg=f"{entry.method} {entry.path} {entry.status}",
            request_id=entry.request_id,
            status=entry.status,
            duration_ms=entry.duration_ms,
            route=entry.route,
        )
        return _encoder.encode(line).decode(errors="replace")

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every record queued before this call is written (or after `timeout`)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        # Only flushes: logging.config.dictConfig (Litestar's logging set-up at start-up) closes every
        # existing handler yet leaves it attached to its logger, and this one must keep writing. The
        # writer is a daemon thread: it ends with the process, after logging.shutdown flushed it.
        self.flush()
        super().close()


def configure_logging(level: str = "INFO") -> None:
    """Route the simveb loggers to stderr as JSON lines, written off the calling thread (idempotent)."""
    root = logging.getLogger("simveb")
    root.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = BackgroundHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.propagate = False


def flush_logs() -> None:
    """Write the queued log lines now (at shutdown, so the last lines are not lost)."""
    for handler in logging.getLogger("simveb").handlers:
        if isinstance(handler, BackgroundHandler):
            handler.flush()
