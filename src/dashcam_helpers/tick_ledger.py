"""The policy tick's ledger: the part of the ledger a tick uses, that keeps working when the
database does not.

The policy tick must power the Pi off before the battery is empty whatever the ledger
does, so it opens the ledger through TickLedger: when the database cannot be read or
written (damaged, locked, a read-only directory), the tick's readings and state go to a
small fallback file for this boot (FALLBACK_NAME) and the tick goes on.
"""

from __future__ import annotations

import json
import os
import sqlite3
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from .strictjson import dumps
from .ledger import Ledger
from .ledger_file import LedgerError, damage_marker, is_damage, set_aside
from .log import get as get_logger

log = get_logger("dashcam.ledger")


# --- the policy tick's ledger: keeps working when the database does not -------------------------

FALLBACK_NAME = "policy-fallback.json"
FALLBACK_READINGS = 50  # more than the tick's history (policy.HISTORY)
FALLBACK_MAX_BYTES = 1024 * 1024


class TickLedger:
    """The part of the ledger a policy tick uses (get_state, recent_readings, backlog, transaction,
    add_reading, put_state), that never raises.

    While the database works it is used as it is. When it cannot be opened, read or written
    (damaged: then moved aside, see set_aside; locked longer than ``timeout``; a read-only
    directory; a full disk), ``problem`` says why, the journal says so at ERROR on every tick,
    and what the tick writes goes to a small JSON file of this boot (its readings and state, so
    the debounce and the unknown-reading window keep counting) in the first of ``fallback_dirs``
    that takes it. A state key the fallback holds wins over the database's (it is newer); once
    the database takes a tick's writes again, the fallback forgets those keys.
    """

    # said once per open when the database is unusable
    SAYS = "policy: ledger unusable, this tick keeps its readings and state in a fallback file (the shutdown still works)"

    def __init__(self, path: str, fallback_dirs: Sequence[str], boot_id: str, *, timeout: float = 5,
                 says: str = SAYS):
        self.path = path
        self.says = says
        self.boot_id = boot_id
        self.fallback_dirs = [d for d in fallback_dirs if d]
        self.problem: Optional[str] = None
        self.ledger: Optional[Ledger] = None
        self._tx = False
        self._readings: List[Dict[str, Any]] = []
        self._state: Dict[str, Any] = {}
        self.fallback = self._load_fallback()
        try:
            self.ledger = Ledger(path, timeout=timeout)
        except Exception as e:  # noqa: B902 - whatever it is, the tick goes on without it
            self._broken(e)

    def __enter__(self) -> "TickLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ledger is not None:
            try:
                self.ledger.close()
            except sqlite3.Error:
                pass

    def _broken(self, e: BaseException) -> None:
        if self.ledger is not None:
            try:
                if self.ledger.db.in_transaction:
                    self.ledger.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if is_damage(e) and damage_marker(self.path) is None:
                self.close()
                try:
                    set_aside(self.path, str(e))
                except OSError as oe:
                    log.error("the damaged ledger %s could not be moved aside: %s", self.path, oe)
            self.close()
            self.ledger = None
        if self.problem is None:
            self.problem = str(e) if isinstance(e, LedgerError) else f"the ledger {self.path}: {type(e).__name__}: {e}"
            log.error("%s: %s", self.says, self.problem)

    def _use(self, fn, default):
        if self.ledger is None:
            return default
        try:
            return fn(self.ledger)
        except Exception as e:  # noqa: B902
            self._broken(e)
            return default

    # --- reads ---------------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        if key in self.fallback["state"]:
            return self.fallback["state"][key]

        def read(ledger: Ledger) -> Any:
            try:
                return ledger.get_state(key, default)
            except ValueError as e:  # one value that is not JSON: that state is lost, not the ledger
                log.error("policy: the ledger's state %r is not JSON (%s): read as none, written anew", key, e)
                return default

        return self._use(read, default)

    def recent_readings(self, limit: int) -> List[Any]:
        """The database's newest readings and the fallback's (this boot), oldest first: other boots
        in the database's order, then this boot's by monotonic time."""
        rows = [dict(r) for r in self._use(lambda ledger: ledger.recent_readings(limit), [])]
        rows += self.fallback["readings"]
        def order(row: Dict[str, Any]) -> Tuple[bool, float]:
            m = row.get("monotonic")
            this_boot = row.get("boot_id") == self.boot_id
            usable = isinstance(m, (int, float)) and not isinstance(m, bool) and m - m == 0
            return this_boot, float(m) if this_boot and usable else 0.0

        rows.sort(key=order)
        return rows[-limit:] if limit > 0 else []

    def backlog(self) -> Tuple[int, int]:
        return self._use(lambda ledger: ledger.backlog(), (0, 0))

    def backlog_detail(self) -> Tuple[int, int, int, Optional[float]]:
        return self._use(lambda ledger: ledger.backlog_detail(), (0, 0, 0, None))

    # --- writes --------------------------------------------------------------------------------

    def transaction(self) -> "_TickTransaction":
        return _TickTransaction(self)

    def add_reading(self, **reading: Any) -> None:
        self._readings.append({k: v for k, v in reading.items() if k != "keep"})
        self._use(lambda ledger: ledger.add_reading(**reading), None)
        if not self._tx:
            self._settle()

    def note_recording(self, **window: Any) -> None:
        """The camera's recording window (Ledger.note_recording); lost with the ledger, never the tick."""
        self._use(lambda ledger: ledger.note_recording(**window), None)

    def put_state(self, key: str, value: Any) -> None:
        self._state[key] = value
        self._use(lambda ledger: ledger.put_state(key, value), None)
        if not self._tx:
            self._settle()

    def _settle(self) -> None:
        """After the writes of a transaction (or one write outside any): to the fallback when the
        database did not take them, else the fallback forgets the state keys it held."""
        readings, state = self._readings, self._state
        self._readings, self._state = [], {}
        if self.ledger is None:
            fb = self.fallback
            fb["readings"] = (fb["readings"] + [{**r, "external": None if r.get("external") is None else int(r["external"])}
                                                for r in readings])[-FALLBACK_READINGS:]
            fb["state"].update(state)
            self._save_fallback()
        elif any(k in self.fallback["state"] for k in state):
            for k in state:
                self.fallback["state"].pop(k, None)
            self._save_fallback()

    # --- the fallback file ---------------------------------------------------------------------

    def _load_fallback(self) -> Dict[str, Any]:
        empty: Dict[str, Any] = {"boot_id": self.boot_id, "readings": [], "state": {}}
        for d in self.fallback_dirs:
            name = os.path.join(d, FALLBACK_NAME)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                data = os.read(fd, FALLBACK_MAX_BYTES + 1) if _is_regular(fd) else b""
            except OSError:
                data = b""
            finally:
                os.close(fd)
            try:
                value = json.loads(data.decode("utf-8", "replace")) if len(data) <= FALLBACK_MAX_BYTES else None
            except (ValueError, RecursionError):
                value = None
            if (
                isinstance(value, dict)
                and value.get("boot_id") == self.boot_id
                and isinstance(value.get("readings"), list)
                and isinstance(value.get("state"), dict)
                and all(isinstance(r, dict) for r in value["readings"])
            ):
                log.warning("policy: using the readings and state of %s (the ledger failed earlier this boot)", name)
                return value
        return empty

    def _save_fallback(self) -> None:
        text = dumps(self.fallback)
        for d in self.fallback_dirs:
            name = os.path.join(d, FALLBACK_NAME)
            tmp = f"{name}.{os.getpid()}.tmp"
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    os.write(fd, text.encode("utf-8"))
                finally:
                    os.close(fd)
                os.rename(tmp, name)
            except OSError as e:
                log.debug("fallback %s: %s", name, e)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                continue
            for other in self.fallback_dirs[self.fallback_dirs.index(d) + 1:]:
                try:  # one fallback file: a later one would be read first next time
                    os.unlink(os.path.join(other, FALLBACK_NAME))
                except OSError:
                    pass
            return
        log.error("policy: no fallback file could be written (%s): this tick's reading is kept nowhere",
                  ", ".join(self.fallback_dirs) or "no directory")


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


class _TickTransaction:
    __slots__ = ("tl",)

    def __init__(self, tl: TickLedger):
        self.tl = tl

    def __enter__(self) -> None:
        self.tl._tx = True
        self.tl._use(lambda ledger: ledger.db.execute("BEGIN IMMEDIATE"), None)

    def __exit__(self, exc_type, exc, tb) -> bool:
        tl = self.tl
        tl._tx = False
        if exc_type is not None:
            tl._use(lambda ledger: ledger.db.execute("ROLLBACK"), None)
            tl._readings, tl._state = [], {}
            return False
        tl._use(lambda ledger: ledger.db.execute("COMMIT"), None)
        tl._settle()
        return False
