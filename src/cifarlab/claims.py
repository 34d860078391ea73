"""Splitting an experiment's points between worker processes through a database (`--storage URL`).

Owns one table of claims, (experiment, point) -> which worker trains it, its heartbeat and whether it
is done. A point goes to the one worker whose INSERT succeeds (the primary key makes that atomic in
SQLite and PostgreSQL alike); a worker beats after every epoch; a claim whose worker is gone (same
host: its process has exited; another host: no beat for STALE_SECONDS) is taken over by the next
worker that asks, which resumes the point from its run folder. Never trains and never reads run folders.
Not Optuna's GridSampler over a shared study: its documentation says concurrent workers will
occasionally suggest the same grid point, and a sweep must never train a point twice.
"""

from __future__ import annotations

import os
import socket
import time

from .errors import UserError

# a worker on another machine that has not beaten for this long is taken for dead (an epoch of the
# slowest seed recipe on 2 CPU cores takes under 15 minutes)
STALE_SECONDS = 1800.0


def retry_schema_race(create, attempts: int = 6):
    """Call `create` (which makes tables or a study in a database), again after a short random pause when
    another worker doing the same at the same moment wins the race: PostgreSQL then reports a unique
    violation (on its catalogue or on the new rows) that a second try, finding them made, does not."""
    import random

    for attempt in range(attempts):
        try:
            return create()
        except Exception as err:  # noqa: BLE001 - driver-specific classes; matched by what they say
            text = f"{type(err).__name__} {err}".lower()
            raced = any(w in text for w in ("unique", "duplicate", "already exists", "integrityerror"))
            if not raced or attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class PointClaims:
    def __init__(self, url: str, experiment: str):
        try:
            import sqlalchemy as sa
        except ImportError:
            raise UserError("--storage needs SQLAlchemy: pip install cifarlab[tune]") from None
        self.sa, self.experiment = sa, experiment
        self.host, self.pid = socket.gethostname(), os.getpid()
        meta = sa.MetaData()
        self.table = sa.Table(
            "cifarlab_point_claims", meta,
            sa.Column("experiment", sa.String(200), primary_key=True),
            sa.Column("point", sa.String(500), primary_key=True),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("heartbeat", sa.Float, nullable=False),
            sa.Column("done", sa.Boolean, nullable=False, default=False))
        try:
            self.engine = sa.create_engine(url)
            retry_schema_race(lambda: meta.create_all(self.engine))  # workers starting together race here
        except Exception as err:  # noqa: BLE001 - bad URL, unreachable server, missing driver
            hint = "; for PostgreSQL: pip install cifarlab[postgres]" if url.startswith("postgresql") else ""
            raise UserError(f"cannot open storage {url} ({str(err).splitlines()[0][:160]}){hint}") from None

    def _where(self, point: str):
        t = self.table
        return (t.c.experiment == self.experiment) & (t.c.point == point)

    def _stale(self, row) -> bool:
        if row.host == self.host:
            return not _alive(row.pid)
        return time.time() - row.heartbeat > STALE_SECONDS

    def claim(self, point: str) -> str | None:
        """None when this worker now owns `point`; else why not ("done", or who holds it)."""
        sa, t = self.sa, self.table
        mine = {"host": self.host, "pid": self.pid, "heartbeat": time.time()}
        try:
            with self.engine.begin() as db:
                db.execute(sa.insert(t).values(experiment=self.experiment, point=point, done=False, **mine))
            return None
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as db:
            row = db.execute(sa.select(t).where(self._where(point))).one()
            if row.done:
                return "done"
            if (row.host, row.pid) == (self.host, self.pid):
                return None
            if not self._stale(row):
                return f"being trained by {row.host} pid {row.pid}"
            # take it over only if nobody else did meanwhile: the row must still be the one just read
            taken = db.execute(sa.update(t).where(self._where(point) & (t.c.host == row.host) & (t.c.pid == row.pid)
                                                  & (t.c.heartbeat == row.heartbeat) & ~t.c.done).values(**mine))
            return None if taken.rowcount == 1 else "taken over by another worker"

    def beat(self, point: str) -> None:
        with self.engine.begin() as db:
            db.execute(self.sa.update(self.table).where(self._where(point)).values(heartbeat=time.time()))

    def finish(self, point: str) -> None:
        with self.engine.begin() as db:
            db.execute(self.sa.update(self.table).where(self._where(point)).values(done=True, heartbeat=time.time()))

    def release(self, point: str) -> None:
        """Give a point back (this worker failed on it): the next worker to ask trains it."""
        with self.engine.begin() as db:
            db.execute(self.sa.delete(self.table).where(self._where(point) & (self.table.c.pid == self.pid)
                                                        & (self.table.c.host == self.host)))
