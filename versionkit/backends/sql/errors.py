"""Driver errors, translated: the SQLSTATE of a failure and the driver's words on one line."""

from __future__ import annotations

from sqlalchemy import exc

from versionkit.errors import BackendError, CorruptStateError, LockTimeout, VersionkitError

__all__ = ["RETRY_SQLSTATES", "driver_message", "sqlstate", "translate"]

# SQLSTATEs worth retrying: serialization_failure, deadlock_detected, unique_violation.
RETRY_SQLSTATES = frozenset({"40001", "40P01", "23505"})


def sqlstate(err: BaseException) -> str | None:
    orig = getattr(err, "orig", None)
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def driver_message(err: exc.SQLAlchemyError, password: str | None) -> str:
    """The driver's own words on one line, without SQLAlchemy's SQL dump or a password."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    message = " ".join(text.split()) or type(err).__name__
    if password:
        message = message.replace(password, "***")
    return message


def translate(
    err: exc.SQLAlchemyError,
    *,
    dialect: str,
    where: str,
    action: str,
    lock_timeout: float,
    password: str | None,
) -> VersionkitError:
    """The one-line ``VersionkitError`` that a driver failure means for the user."""
    message = driver_message(err, password)
    lowered = message.lower()
    state = sqlstate(err)
    if dialect == "sqlite":
        if "locked" in lowered or "busy" in lowered:
            return LockTimeout(
                f"{where}: the database stayed locked by another writer for more than "
                f"{lock_timeout:g} s while trying to {action}"
            )
        if "not a database" in lowered or "malformed" in lowered:
            return CorruptStateError(
                f"{where}: the file is not a readable SQLite database ({message}); "
                f"nothing was changed"
            )
        if "unable to open" in lowered:
            return BackendError(
                f"cannot open {where}: {message} (check that the file and its folder "
                f"exist and are readable and writable)"
            )
    else:
        if state == "55P03":
            return LockTimeout(
                f"{where}: a row stayed locked by another client for more than "
                f"{lock_timeout:g} s while trying to {action}"
            )
        connecting = state is None or state[:2] in ("08", "28", "3D")
        if connecting and isinstance(err, (exc.OperationalError, exc.InterfaceError)):
            return BackendError(f"cannot connect to {where}: {message}")
    return BackendError(f"{where}: could not {action}: {message}")
