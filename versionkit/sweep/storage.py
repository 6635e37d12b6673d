"""Where a study lives, and the short lock that makes the trial count exact.

``--storage`` forms::

    (none)                         Optuna's journal file in the experiment's state folder
    journal:PATH, PATH.journal     an Optuna journal file elsewhere (one machine, or NFS)
    sqlite:///PATH                 Optuna's RDB storage in SQLite (one machine)
    postgresql://USER@HOST/DB      Optuna's RDB storage in PostgreSQL (many machines)

Optuna counts trials only after they finish, so two workers can both start "the last"
trial. Each worker therefore creates its next trial under a lock that spans "count, then
ask": a file lock beside a journal or SQLite file, a PostgreSQL advisory lock (held by one
connection, so a killed worker's lock goes with its connection).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from versionkit.backends.base import redact_uri
from versionkit.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["HEARTBEAT_GRACE_S", "HEARTBEAT_INTERVAL_S", "StorageSpec", "parse_storage"]

#: RDB trials record a heartbeat this often; one silent for the grace period is FAIL.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60
#: A trial killed this many times is not retried again (an OOM kill would loop forever).
MAX_RETRY = 2
_EXPECTED = (
    "expected sqlite:///FILE, postgresql://USER@HOST[:PORT]/DB, journal:FILE or a "
    "FILE.journal path"
)


@dataclass(frozen=True)
class StorageSpec:
    """A parsed ``--storage``.

    Attributes:
        kind: ``journal``, ``sqlite`` or ``postgresql``.
        target: the journal file, or the SQLAlchemy URL (driver filled in).
        shown: the text for messages (password redacted).
    """

    kind: Literal["journal", "sqlite", "postgresql"]
    target: str
    shown: str

    @property
    def url(self) -> str:
        """What plain Optuna takes as ``storage=`` (an RDB URL), or the journal path."""
        return self.target

    def open(self, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
        """Open the Optuna storage (tables created on first use); one per process.

        Raises:
            BackendError: the database cannot be reached.
        """
        key = (self.kind, self.target, heartbeat)
        opened = _opened.get(key)
        if opened is None:
            opened = _opened[key] = self._open(heartbeat)
        return opened

    def _open(self, heartbeat: bool) -> optuna.storages.BaseStorage:
        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        if self.kind == "journal":
            path = Path(self.target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            except OSError as exc:
                raise BackendError(
                    f"--storage {self.shown}: cannot open the journal: {exc.strerror or exc}"
                ) from None
            return optuna.storages.JournalStorage(backend)
        kwargs: dict[str, Any] = {}
        if heartbeat:
            with quiet_experimental():
                retry = RetryHeartbeatStaleTrialCallback(MAX_RETRY)
            kwargs = {
                "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                "grace_period": HEARTBEAT_GRACE_S,
                "heartbeat_stale_trial_callback": retry,
            }
        if self.kind == "sqlite":
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        last: Exception | None = None
        # Two workers creating the tables at the same moment: one of them loses the race
        # on a fresh database; its second try finds the tables.
        for _ in range(3):
            try:
                with quiet_experimental():
                    return optuna.storages.RDBStorage(self.target, **kwargs)
            except Exception as exc:  # SQLAlchemy/driver errors vary by database
                last = exc
        first = str(last).strip().splitlines()[0] if last is not None else "unknown error"
        raise BackendError(f"--storage {self.shown}: cannot open the database: {first}")

    @contextlib.contextmanager
    def claim_lock(self, study: str) -> Iterator[None]:
        """Hold the study's "create the next trial" lock."""
        if self.kind == "postgresql":
            with self._advisory_lock(study):
                yield
            return
        from filelock import FileLock

        base = self.target if self.kind == "journal" else _sqlite_path(self.target)
        with FileLock(f"{base}.{_slug(study)}.claim.lock"):
            yield

    @contextlib.contextmanager
    def _advisory_lock(self, study: str) -> Iterator[None]:
        import sqlalchemy as sa

        key = int.from_bytes(hashlib.sha256(f"versionkit-sweep:{study}".encode()).digest()[:8],
                             "big", signed=True)
        engine = _advisory_engines.get(self.target)
        if engine is None:
            engine = sa.create_engine(self.target, pool_size=1, max_overflow=0)
            _advisory_engines[self.target] = engine
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


_advisory_engines: dict[str, Any] = {}
_opened: dict[tuple[str, str, bool], Any] = {}


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence Optuna's "experimental" warnings for the parts we use on purpose
    (heartbeats and their retry callback have been stable since Optuna 2.x)."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _slug(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _sqlite_path(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).database or "")


def parse_storage(text: str | None, *, default_journal: Path) -> StorageSpec:
    """Parse ``--storage`` (``None``: the journal file ``default_journal``).

    Checks only the form (nothing is opened or created).

    Raises:
        ConfigError: an unknown scheme, or a URL that is not well formed.
    """
    if text is None:
        return StorageSpec("journal", str(default_journal), str(default_journal))
    raw = text.strip()
    shown = redact_uri(raw)
    if not raw:
        raise ConfigError(f"--storage is empty: {_EXPECTED}")
    if raw.startswith("journal:"):
        path = raw[len("journal:"):].removeprefix("//")
        if not path:
            raise ConfigError(f"--storage {shown}: no journal file given; {_EXPECTED}")
        return StorageSpec("journal", os.path.expanduser(path), shown)
    if "://" not in raw:
        if raw.endswith(".journal"):
            return StorageSpec("journal", os.path.expanduser(raw), shown)
        raise ConfigError(f"--storage {shown}: not a storage URL; {_EXPECTED}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(f"--storage {shown}: not a well-formed URL; {_EXPECTED}") from None
    scheme, _, driver = url.drivername.partition("+")
    scheme = "postgresql" if scheme == "postgres" else scheme
    if scheme == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError(
                f"--storage {shown}: needs a database file that every worker can open "
                f"(sqlite:///relative.db or sqlite:////absolute.db)"
            )
        return StorageSpec("sqlite", url.set(drivername="sqlite").render_as_string(False), shown)
    if scheme == "postgresql":
        if not url.host or not url.database:
            raise ConfigError(f"--storage {shown}: needs a host and a database; {_EXPECTED}")
        if url.port is None and ":" in (urlsplit(raw).netloc.rsplit("@", 1)[-1]):
            raise ConfigError(f"--storage {shown}: the port is not a number")
        url = url.set(drivername=f"postgresql+{driver or 'psycopg'}")
        return StorageSpec("postgresql", url.render_as_string(hide_password=False), shown)
    raise ConfigError(f"--storage {shown}: unsupported scheme {scheme!r}; {_EXPECTED}")
