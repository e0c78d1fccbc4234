"""The vehicles bulk pipeline: CSV imports run in the background, and exports streamed by a cursor.

`Imports` owns the jobs of this process: each runs as a task on two connections of its own (tuned
for a big load, never the request pool's), reports its progress in memory while it runs, and saves
its outcome in `vehicles.import_jobs`. The file is COPYed into a staging table, then checked batch by
batch on the first connection while the second inserts the batch checked before it, each batch in a
transaction of its own under a lock timeout: the registry keeps its indexes and stays open to every
other request, and a concurrent lock (a migration) makes the import back off instead of queueing. `Exports` owns the open exports: each is a read-only,
repeatable-read transaction with a server-side cursor on a connection of its own, read batch by batch
across messages and closed when exhausted, by the client, or after being idle. The SQL is in
`bulk_store`; the actor's handlers only hand messages to these two.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from simveb.actors.vehicles import bulk_store
from simveb.actors.vehicles.messages import (
    CSV_COLUMNS,
    CSV_REQUIRED,
    ExportChunk,
    ImportJob,
    OpenExport,
    StartImport,
    VehiclesImported,
)
from simveb.csvcells import safe_writer
from simveb.db import init_connection
from simveb.errors import NotFound, Unavailable
from simveb.messages import Event

if TYPE_CHECKING:
    from simveb.config import Settings
    from simveb.db import Database

log = logging.getLogger("simveb.vehicles")

Emit = Callable[..., Awaitable[None]]  # the actor's emit(con, *events)


class ImportFileError(Exception):
    """The file cannot be imported at all (no header, unknown or missing columns)."""


def read_header(source: Path) -> list[str]:
    """The CSV header's column names, checked against CSV_COLUMNS (any order, optional ones may be missing)."""
    with source.open(encoding="utf-8-sig", newline="") as f:
        first = next(csv.reader(f), None)
    if not first:
        raise ImportFileError("the file is empty: expected a header line naming the columns")
    columns = [c.strip().lower() for c in first]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise ImportFileError(f"unknown column(s) {', '.join(unknown)}; expected some of {', '.join(CSV_COLUMNS)}")
    missing = sorted(CSV_REQUIRED - set(columns))
    if missing:
        raise ImportFileError(f"missing column(s) {', '.join(missing)}")
    if len(set(columns)) != len(columns):
        raise ImportFileError("a column appears twice in the header")
    return columns


class Imports:
    """The import jobs of this process: started, followed in memory while they run, saved when done."""

    def __init__(self, db: Database, settings: Callable[[], Settings], emit: Emit) -> None:
        self.db = db
        self._settings = settings  # read at each use: the actor's settings may be replaced
        self._emit = emit
        self.jobs: dict[UUID, ImportJob] = {}
        self._phase_started: dict[UUID, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, msg: StartImport) -> ImportJob:
        source = Path(msg.path)
        if not source.is_file():
            raise NotFound(f"no file {msg.path}", code="import_file_not_found")
        async with self.db.connection() as con:
            await bulk_store.drop_stale_batches(con)
            job = await bulk_store.insert_job(con, str(source), msg.error_path, msg.by)
        job = msgspec.structs.replace(job, bytes_total=source.stat().st_size)
        self.jobs[job.id] = job
        task = asyncio.create_task(self._run(job.id, source, Path(msg.error_path), msg.by))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, job_id: UUID) -> ImportJob:
        live = self.jobs.get(job_id)
        if live is not None:
            return live
        async with self.db.connection() as con:
            job = await bulk_store.get_job(con, job_id)
        if job is None:
            raise NotFound(f"no import job {job_id}", code="unknown_import_job")
        return job

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _progress(self, job_id: UUID, **changes: Any) -> ImportJob:
        current = self.jobs[job_id]
        if changes.get("phase", current.phase) != current.phase:
            now = time.monotonic()
            started = self._phase_started.get(job_id, now)
            if current.phase:
                changes["seconds"] = {**current.seconds, current.phase: round(now - started, 3)}
            self._phase_started[job_id] = now
        job = msgspec.structs.replace(current, **changes)
        self.jobs[job_id] = job
        return job

    async def _connect(self) -> asyncpg.Connection:
        cfg = self._settings().vehicles
        # A connection of its own: big sort and temp memory for this session only, pool untouched.
        # No JIT: the huge row estimates of the import statements make them compile for seconds.
        # No merge joins: joining a million staged rows to the small catalogue hashes far cheaper
        # than it sorts, whatever the estimates of the freshly filled staging table say.
        # A lock timeout: an import never queues behind a migration's lock (and everyone behind it).
        return await asyncpg.connect(
            self.db.url,
            timeout=self.db.acquire_timeout,
            server_settings={
                "work_mem": cfg.import_work_mem,
                "temp_buffers": cfg.import_work_mem,
                "maintenance_work_mem": cfg.import_work_mem,
                "jit": "off",
                "enable_mergejoin": "off",
                "lock_timeout": f"{int(cfg.import_lock_timeout_s * 1000)}ms",
            },
        )

    async def _run(self, job_id: UUID, source: Path, error_path: Path, by: str) -> None:
        cfg = self._settings().vehicles
        con: asyncpg.Connection | None = None
        writer: asyncpg.Connection | None = None
        try:
            self._progress(job_id, state="running", phase="reading header")
            columns = read_header(source)
            con = await self._connect()
            await bulk_store.create_staging(con)
            self._progress(job_id, phase="copying")
            try:
                await bulk_store.copy_csv(con, self._chunks(job_id, source), columns)
            except (asyncpg.BadCopyFileFormatError, asyncpg.InvalidTextRepresentationError) as exc:
                # Ragged rows or a broken quote: the server refuses the whole COPY. Parse in Python
                # instead, so each bad row is rejected alone and the rest still comes in.
                log.info("import %s: COPY refused the file (%s); parsing it row by row", job_id, exc)
                await bulk_store.create_staging(con)
                self._progress(job_id, phase="copying (row by row)", bytes_read=0)
                await self._copy_rows(con, source, columns)
            staged = await bulk_store.staged_rows(con)
            self._progress(job_id, phase="finding duplicates", total_rows=staged)
            await bulk_store.prepare_checks(con)
            ranges = await bulk_store.batch_ranges(con, staged, cfg.import_batch_rows)
            base: bytes = await con.fetchval("SELECT uuid_send(vehicles.uuid7())")
            self._progress(job_id, phase="validating and inserting")
            writer = await self._connect()
            inserted, retry = await self._pipeline(job_id, con, writer, ranges, base, by)
            for batch in retry:
                inserted += await self._insert_retrying(job_id, con, batch, by, recheck=True)
            rejected = await bulk_store.rejected_rows(con)
            self._progress(
                job_id,
                total_rows=staged,
                inserted=inserted,
                rejected=rejected,
                skipped=staged - inserted - rejected,
                phase="writing rejected rows",
            )
            if rejected:
                error_path.parent.mkdir(parents=True, exist_ok=True)
                await bulk_store.write_rejects(con, str(error_path))
            self._progress(job_id, state="done", phase="done", finished_at=datetime.now(UTC))
            log.info("import %s: %d rows, %d inserted, %d rejected", job_id, staged, inserted, rejected)
        except asyncio.CancelledError:
            self._progress(job_id, state="failed", error="stopped before the end", finished_at=datetime.now(UTC))
            raise
        except asyncpg.LockNotAvailableError as exc:
            log.warning("import %s failed: %s", job_id, exc)
            error = (
                "the vehicles table stayed locked by another session (a migration?); the batches before"
                " were committed: import the file again to add the rest"
            )
            self._progress(job_id, state="failed", error=error, finished_at=datetime.now(UTC))
        except (ImportFileError, UnicodeDecodeError, asyncpg.PostgresError, OSError) as exc:
            log.warning("import %s failed: %s", job_id, exc)
            self._progress(job_id, state="failed", error=str(exc)[:1000], finished_at=datetime.now(UTC))
        except Exception as exc:
            log.exception("import %s crashed", job_id)
            self._progress(job_id, state="failed", error=f"internal error: {exc}"[:1000], finished_at=datetime.now(UTC))
        finally:
            for c in (writer, con):
                if c is not None:
                    with contextlib.suppress(Exception):
                        await c.close()
            with contextlib.suppress(Exception):
                async with self.db.connection() as pooled:
                    await bulk_store.drop_batches(pooled, job_id)
                    await bulk_store.save_job(pooled, self.jobs[job_id])
            self._forget_old_jobs()

    async def _pipeline(
        self,
        job_id: UUID,
        con: asyncpg.Connection,
        writer: asyncpg.Connection,
        ranges: list[tuple[int, int]],
        base: bytes,
        by: str,
    ) -> tuple[int, list[int]]:
        """Check batch k+1 on the staging connection while the writer inserts batch k: both cores work.

        Returns the rows inserted and the batches to insert again after a recheck (a plate taken since
        the checks: only the staging connection can move such a row to the rejects).
        """
        ready: asyncio.Queue[int | None] = asyncio.Queue(maxsize=2)
        inserted = 0
        retry: list[int] = []

        async def check() -> None:
            for batch, blocks in enumerate(ranges):
                await bulk_store.check_batch(con, job_id, batch, blocks, base, by)
                await ready.put(batch)
            await ready.put(None)

        async def insert() -> None:
            nonlocal inserted
            while (batch := await ready.get()) is not None:
                try:
                    inserted += await self._insert_retrying(job_id, writer, batch, by)
                except asyncpg.UniqueViolationError:
                    retry.append(batch)
                self._progress(job_id, inserted=inserted)

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(check())
                tasks.create_task(insert())
        except ExceptionGroup as group:
            # One side failed and the other was cancelled: the job reports the first cause.
            raise group.exceptions[0] from None
        return inserted, retry

    async def _insert_retrying(
        self, job_id: UUID, con: asyncpg.Connection, batch: int, by: str, recheck: bool = False
    ) -> int:
        """Insert one batch in a transaction of its own, with its event; retried after a lock timeout."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                async with con.transaction():
                    if recheck:
                        await bulk_store.reject_taken_plates(con, job_id, batch)
                    count = await bulk_store.insert_batch(con, job_id, batch)
                    if count:
                        imported: Event = VehiclesImported(job_id=job_id, inserted=count, by=by)
                        await self._emit(con, imported)
                break
            except asyncpg.LockNotAvailableError:
                # Someone holds a conflicting lock (DDL): wait a little rather than queue in front of
                # every reader; give up after a few tries (the committed batches stay: re-run the file).
                if attempt == attempts:
                    raise
                await asyncio.sleep(attempt * self._settings().vehicles.import_lock_timeout_s)
            except asyncpg.UniqueViolationError:
                # A plate taken since the checks: recheck the batch (on the staging connection).
                if not recheck or attempt == attempts:
                    raise
        await bulk_store.drop_batch(con, job_id, batch)
        return count

    def _forget_old_jobs(self) -> None:
        # Finished jobs are read from the table; only the last few stay in memory (with byte counts).
        finished = [k for k, j in self.jobs.items() if j.state in ("done", "failed")]
        for k in finished[:-20]:
            del self.jobs[k]
            self._phase_started.pop(k, None)

    async def _chunks(self, job_id: UUID, source: Path) -> AsyncIterator[bytes]:
        read = 0
        with source.open("rb") as f:
            while data := f.read(1 << 20):
                read += len(data)
                self._progress(job_id, bytes_read=read)
                yield data

    async def _copy_rows(self, con: asyncpg.Connection, source: Path, columns: list[str]) -> None:
        width = len(columns)
        batch: list[tuple[Any, ...]] = []
        with source.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            for fields in reader:
                if len(fields) == width:
                    batch.append((None, *fields))
                else:
                    padded = (fields + [""] * width)[:width]
                    batch.append((f"row has {len(fields)} fields, expected {width}", *padded))
                if len(batch) >= 50_000:
                    await bulk_store.copy_records(con, batch, columns)
                    batch = []
        if batch:
            await bulk_store.copy_records(con, batch, columns)


class _Export:
    """One open export: its connection, the read-only repeatable-read transaction, the server-side cursor."""

    def __init__(self, con: asyncpg.Connection | None, tx: Any, cursor: Any) -> None:
        self.con = con
        self.tx = tx
        self.cursor = cursor
        self.lock = asyncio.Lock()
        self.header_sent = False
        self.used = time.monotonic()


class Exports:
    """The open exports of this process, each on a connection of its own, reaped when left idle."""

    def __init__(self, db: Database, settings: Callable[[], Settings]) -> None:
        self.db = db
        self._settings = settings
        self.open: dict[UUID, _Export] = {}
        self._reaper = asyncio.create_task(self._reap(), name="vehicles:export-reaper")

    async def start(self, msg: OpenExport, fuzzy: bulk_store.FuzzyMode) -> UUID:
        # The cursor lives across messages, so it cannot hold a pooled connection (the runtime's are
        # per message); a connection of its own keeps the request pool whole. As many exports at once
        # as the pool has connections, as before this moved off the pool.
        if len(self.open) >= self._settings().database.pool_max:
            raise Unavailable("too many exports running; try again shortly", code="exports_busy")
        export_id = uuid4()
        con = await asyncpg.connect(self.db.url, timeout=self.db.acquire_timeout)
        try:
            await init_connection(con)
            # One consistent snapshot for the whole file, read in batches by a server-side cursor.
            tx = con.transaction(isolation="repeatable_read", readonly=True)
            await tx.start()
            query = await bulk_store.export_query(con, msg.filter, msg.viewer, fuzzy)
            if query is None:
                await con.close()
                self.open[export_id] = _Export(None, None, None)
                return export_id
            cursor = await con.cursor(query[0], *query[1])
        except BaseException:
            con.terminate()
            raise
        self.open[export_id] = _Export(con, tx, cursor)
        return export_id

    async def read(self, export_id: UUID) -> ExportChunk:
        export = self.open.get(export_id)
        if export is None:
            raise NotFound("no such export (finished or expired)", code="unknown_export")
        async with export.lock:
            export.used = time.monotonic()
            batch = self._settings().vehicles.export_batch_rows
            rows = await export.cursor.fetch(batch) if export.cursor is not None else []
            buf = io.StringIO()
            writer = safe_writer(buf)
            if not export.header_sent:
                writer.writerow(CSV_COLUMNS)
                export.header_sent = True
            writer.writerows(tuple(r) for r in rows)
            done = len(rows) < batch
        if done:
            await self.close(export_id)
        return ExportChunk(data=buf.getvalue().encode(), done=done)

    async def close(self, export_id: UUID) -> bool:
        export = self.open.pop(export_id, None)
        if export is None:
            return False
        if export.con is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await export.con.close()  # ends the read-only transaction: nothing to commit
            if not export.con.is_closed():
                export.con.terminate()
        return True

    async def stop(self) -> None:
        self._reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reaper
        for export_id in list(self.open):
            await self.close(export_id)

    async def _reap(self) -> None:
        # A client that disconnects without closing its export must not hold a connection for ever.
        while True:
            await asyncio.sleep(5)
            idle = self._settings().vehicles.export_idle_timeout_s
            now = time.monotonic()
            for export_id, export in list(self.open.items()):
                if now - export.used > idle and not export.lock.locked():
                    log.info("closing idle export %s", export_id)
                    await self.close(export_id)
