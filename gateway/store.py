"""Jobs, their artifacts and uploaded inputs, kept in SQLite and plain files.

A gateway restart loses nothing it accepted: queued jobs stay queued, jobs that were running
go back to the queue (their backend work died with the process), finished jobs keep their
artifacts until the retention limit. Inputs are content-addressed (their SHA-256), so the
same image uploaded twice is stored once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from threegen.gateway.v1 import gateway_pb2

SCHEMA = """
create table if not exists jobs (
    id text primary key,
    status integer not null,
    request blob not null,
    prompt text not null default '',
    created_at real not null,
    started_at real,
    finished_at real,
    progress blob,
    result blob,
    error_code text not null default '',
    error_message text not null default '',
    field_errors blob,
    cache_key text,
    cached integer not null default 0
);
create index if not exists jobs_status_created on jobs (status, created_at);
create index if not exists jobs_cache_key on jobs (cache_key);
"""

FINISHED = (gateway_pb2.JOB_STATUS_SUCCEEDED, gateway_pb2.JOB_STATUS_FAILED, gateway_pb2.JOB_STATUS_CANCELLED)


@dataclass
class JobRecord:
    id: str
    status: int
    request: gateway_pb2.GenerateRequest
    prompt: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: bytes | None
    result: bytes | None
    error_code: str
    error_message: str
    field_errors: bytes | None
    cache_key: str | None
    cached: bool


class JobStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "jobs").mkdir(parents=True, exist_ok=True)
        (root / "inputs").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ---- jobs ---------------------------------------------------------------------------

    def _row(self, row: tuple) -> JobRecord:
        request = gateway_pb2.GenerateRequest.FromString(row[2])
        return JobRecord(row[0], row[1], request, *row[3:13], bool(row[13]))

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _execute(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def create(self, request: gateway_pb2.GenerateRequest, status: int, cache_key: str | None) -> JobRecord:
        job_id = uuid.uuid4().hex[:20]
        now = time.time()
        self._execute(
            "insert into jobs (id, status, request, prompt, created_at, cache_key) values (?, ?, ?, ?, ?, ?)",
            (job_id, status, request.SerializeToString(), request.prompt[:200], now, cache_key),
        )
        (self.root / "jobs" / job_id).mkdir(exist_ok=True)
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._query("select * from jobs where id = ?", (job_id,))
        return self._row(rows[0]) if rows else None

    def queued(self) -> list[str]:
        """Ids of queued jobs, oldest first (the order they run in)."""
        rows = self._query(
            "select id from jobs where status = ? order by created_at, id", (gateway_pb2.JOB_STATUS_QUEUED,)
        )
        return [r[0] for r in rows]

    def count(self, status: int) -> int:
        return self._query("select count(*) from jobs where status = ?", (status,))[0][0]

    def mark_running(self, job_id: str) -> bool:
        changed = self._execute(
            "update jobs set status = ?, started_at = ? where id = ? and status = ?",
            (gateway_pb2.JOB_STATUS_RUNNING, time.time(), job_id, gateway_pb2.JOB_STATUS_QUEUED),
        )
        return changed == 1

    def set_progress(self, job_id: str, progress: bytes) -> None:
        self._execute("update jobs set progress = ? where id = ?", (progress, job_id))

    def finish(
        self,
        job_id: str,
        status: int,
        *,
        result: bytes | None = None,
        error_code: str = "",
        error_message: str = "",
        field_errors: bytes | None = None,
        cached: bool = False,
    ) -> bool:
        """Record the end of a job; a job already finished (e.g. cancelled) is left as it is."""
        changed = self._execute(
            "update jobs set status = ?, finished_at = ?, result = ?, error_code = ?, error_message = ?, "
            "field_errors = ?, cached = ? where id = ? and status not in (?, ?, ?)",
            (
                status,
                time.time(),
                result,
                error_code,
                error_message,
                field_errors,
                int(cached),
                job_id,
                *FINISHED,
            ),
        )
        return changed == 1

    def requeue_interrupted(self) -> int:
        """After a restart: jobs that were running go back to the queue, in their old order."""
        return self._execute(
            "update jobs set status = ?, started_at = null, progress = null where status = ?",
            (gateway_pb2.JOB_STATUS_QUEUED, gateway_pb2.JOB_STATUS_RUNNING),
        )

    def cached_job(self, cache_key: str) -> JobRecord | None:
        rows = self._query(
            "select * from jobs where cache_key = ? and status = ? order by finished_at desc limit 1",
            (cache_key, gateway_pb2.JOB_STATUS_SUCCEEDED),
        )
        for row in rows:
            job = self._row(row)
            if job.result is not None and self.artifacts_present(job):
                return job
        return None

    def page(self, limit: int, before: tuple[float, str] | None, status: int) -> list[JobRecord]:
        sql, args = "select * from jobs where 1 = 1", []
        if status:
            sql += " and status = ?"
            args.append(status)
        if before is not None:
            sql += " and (created_at < ? or (created_at = ? and id < ?))"
            args += [before[0], before[0], before[1]]
        sql += " order by created_at desc, id desc limit ?"
        args.append(limit)
        return [self._row(r) for r in self._query(sql, tuple(args))]

    def expire(self, older_than: float, keep: int) -> list[str]:
        """Delete finished jobs (and their files) past the retention time or beyond `keep`."""
        rows = self._query(
            "select id from jobs where status in (?, ?, ?) and (finished_at < ? or id not in ("
            "select id from jobs where status in (?, ?, ?) order by finished_at desc limit ?))",
            (*FINISHED, older_than, *FINISHED, keep),
        )
        removed = [r[0] for r in rows]
        for job_id in removed:
            self._execute("delete from jobs where id = ?", (job_id,))
            shutil.rmtree(self.root / "jobs" / job_id, ignore_errors=True)
        return removed

    # ---- artifacts ------------------------------------------------------------------------

    def artifact_path(self, job_id: str, name: str) -> Path:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"bad artifact name {name!r}")
        return self.root / "jobs" / job_id / name

    def write_artifact(self, job_id: str, name: str, data: bytes) -> None:
        path = self.artifact_path(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{name}.part")
        scratch.write_bytes(data)
        os.replace(scratch, path)

    def artifacts_present(self, job: JobRecord) -> bool:
        result = gateway_pb2.GenerateResult.FromString(job.result or b"")
        return all(self.artifact_path(job.id, a.name).is_file() for a in result.artifacts)

    def copy_artifacts(self, source: str, target: str) -> None:
        for path in (self.root / "jobs" / source).iterdir():
            if path.is_file() and not path.name.startswith("."):
                destination = self.artifact_path(target, path.name)
                try:
                    os.link(path, destination)  # same bytes, no copy
                except OSError:
                    shutil.copyfile(path, destination)

    def read_chunks(self, job_id: str, name: str, size: int) -> Iterator[bytes]:
        with open(self.artifact_path(job_id, name), "rb") as handle:
            while block := handle.read(size):
                yield block

    # ---- inputs -------------------------------------------------------------------------------

    def put_input(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "inputs" / digest
        if not path.exists():
            scratch = path.with_name(f".{digest}.{uuid.uuid4().hex}")
            scratch.write_bytes(data)
            os.replace(scratch, path)
        return digest

    def get_input(self, input_id: str) -> bytes | None:
        if len(input_id) != 64 or any(c not in "0123456789abcdef" for c in input_id):
            return None
        path = self.root / "inputs" / input_id
        return path.read_bytes() if path.is_file() else None
