"""Will a read see the last acknowledged write? W + R > RF, checked before the sink starts.

Pure: `check_overlap` takes the keyspace's replication map as stored in
system_schema.keyspaces and the two consistency level names. When both levels are
DC-local (LOCAL_ONE, LOCAL_QUORUM, EACH_QUORUM) the overlap is counted in the local
datacenter; otherwise across all replicas, where a LOCAL_* level counts only its local
replicas (so a mix of local and global levels in several DCs is judged conservatively).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_DC_LOCAL = frozenset({"LOCAL_ONE", "LOCAL_QUORUM", "EACH_QUORUM"})
_NOT_DCS = frozenset({"class", "replication_factor"})


class ConsistencyConfigError(RuntimeError):
    """The configured consistency cannot guarantee read-your-writes; the message says why."""


@dataclass(frozen=True)
class Replication:
    strategy: str
    factors: Mapping[str, int]  # datacenter -> RF (SimpleStrategy: {"*": rf})

    @classmethod
    def from_system_schema(cls, replication: Mapping[str, str]) -> Replication:
        strategy = replication.get("class", "").rsplit(".", 1)[-1]
        if strategy == "SimpleStrategy":
            return cls(strategy, {"*": int(replication.get("replication_factor", "0"))})
        # NetworkTopologyStrategy (and lookalikes): one entry per datacenter. Values may be
        # "3" or, with transient replication, "3/1" (full/transient): count full replicas.
        factors = {
            dc: int(str(v).split("/", 1)[0]) for dc, v in replication.items() if dc not in _NOT_DCS
        }
        return cls(strategy, factors)

    @property
    def total(self) -> int:
        return sum(self.factors.values())

    def local(self, datacenter: str) -> int:
        if "*" in self.factors:
            return self.factors["*"]
        return self.factors.get(datacenter, 0)


def _quorum(n: int) -> int:
    return n // 2 + 1


def replicas_needed(level: str, repl: Replication, datacenter: str, *, local_scope: bool) -> int:
    """How many replicas acknowledge a request at `level`, counted in the scope in use."""
    level = level.upper()
    local = repl.local(datacenter)
    table = {
        "ANY": 0,
        "ONE": 1,
        "LOCAL_ONE": 1,
        "TWO": 2,
        "THREE": 3,
        "QUORUM": _quorum(repl.total),
        "LOCAL_QUORUM": _quorum(local),
        "ALL": repl.total,
    }
    if level == "EACH_QUORUM":
        if local_scope:
            return _quorum(local)
        return sum(_quorum(rf) for rf in repl.factors.values())
    try:
        return table[level]
    except KeyError:
        raise ConsistencyConfigError(f"unknown consistency level {level!r}") from None


@dataclass(frozen=True)
class Overlap:
    ok: bool
    write: int
    read: int
    rf: int
    scope: str
    reason: str


def check_overlap(
    replication: Mapping[str, str] | Replication,
    datacenter: str,
    write_level: str,
    read_level: str,
) -> Overlap:
    repl = (
        replication
        if isinstance(replication, Replication)
        else Replication.from_system_schema(replication)
    )
    wl, rl = write_level.upper(), read_level.upper()
    local_scope = wl in _DC_LOCAL and rl in _DC_LOCAL
    rf = repl.local(datacenter) if local_scope else repl.total
    scope = f"datacenter {datacenter!r}" if local_scope else "the cluster"
    w = replicas_needed(wl, repl, datacenter, local_scope=local_scope)
    r = replicas_needed(rl, repl, datacenter, local_scope=local_scope)
    if repl.local(datacenter) == 0 and (wl.startswith("LOCAL_") or rl.startswith("LOCAL_")):
        return Overlap(
            False,
            w,
            r,
            rf,
            scope,
            f"the keyspace has no replicas in the local datacenter {datacenter!r} "
            f"(replication {dict(repl.factors)}), so LOCAL_* requests always fail",
        )
    for name, level, need in (("write", wl, w), ("read", rl, r)):
        if need > rf:
            return Overlap(
                False,
                w,
                r,
                rf,
                scope,
                f"{name} consistency {level} needs {need} replicas but {scope} has "
                f"only {rf}: every {name} would fail",
            )
    if w + r > rf:
        return Overlap(
            True,
            w,
            r,
            rf,
            scope,
            f"write {wl} ({w}) + read {rl} ({r}) = {w + r} > RF {rf} in {scope}: "
            "every read sees the last acknowledged write",
        )
    return Overlap(
        False,
        w,
        r,
        rf,
        scope,
        f"write {wl} ({w} replicas) + read {rl} ({r} replicas) = {w + r} <= RF {rf} "
        f"in {scope}: a read may miss an acknowledged write. Raise the write or read "
        "consistency (LOCAL_QUORUM for both gives W + R > RF)",
    )


def require_overlap(
    replication: Mapping[str, str] | Replication, datacenter: str, write_level: str, read_level: str
) -> Overlap:
    result = check_overlap(replication, datacenter, write_level, read_level)
    if not result.ok:
        raise ConsistencyConfigError(result.reason)
    return result


def keyspace_replication(session: object, keyspace: str) -> dict[str, str]:
    """The keyspace's replication map as Cassandra stores it (system_schema.keyspaces)."""
    rows = list(
        session.execute(  # type: ignore[attr-defined]
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
        )
    )
    if not rows:
        raise ConsistencyConfigError(
            f"keyspace {keyspace!r} does not exist; provision it first (python -m infra provision)"
        )
    return dict(rows[0].replication)
