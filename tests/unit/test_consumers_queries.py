"""consumers.queries with a fake session: one status per image, verified label pages,
scans that resume from their paging state, consistent stats."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import OperationTimedOut, ReadTimeout

from consumers import queries
from infra import cassandra_session


class FakePrepared:
    def __init__(self, text: str) -> None:
        self.query_string = text
        self.is_idempotent = False
        self.consistency_level = None
        self.fetch_size = None


class FakeSession:
    """Serves `rows` in pages of the statement's fetch_size; `failures` maps a paging
    state (None = first page) to how many times that page fails first."""

    def __init__(
        self,
        rows: list[Any],
        failures: dict[Any, int] | None = None,
        error: type[Exception] = OperationTimedOut,
    ) -> None:
        self.rows = rows
        self.failures = dict(failures or {})
        self.error = error
        self.requests: list[tuple[Any, Any]] = []
        self.cluster = SimpleNamespace(
            profile_manager=SimpleNamespace(profiles={cassandra_session.READ_PROFILE: object()})
        )

    def prepare(self, text: str) -> FakePrepared:
        return FakePrepared(text)

    def execute(
        self,
        stmt: FakePrepared,
        params: Any = None,
        *,
        execution_profile: Any,
        paging_state: Any = None,
    ) -> Any:
        assert stmt.is_idempotent, "every read must be idempotent"
        assert execution_profile == cassandra_session.READ_PROFILE
        self.requests.append((paging_state, params))
        if self.failures.get(paging_state, 0) > 0:
            self.failures[paging_state] -= 1
            raise self.error("timed out")
        start = paging_state or 0
        end = start + (stmt.fetch_size or len(self.rows))
        return SimpleNamespace(
            current_rows=self.rows[start:end], paging_state=end if end < len(self.rows) else None
        )


def row(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**kw)


def test_a_scan_resumes_from_the_failed_pages_paging_state() -> None:
    rows = [row(image_id=f"i{n}") for n in range(25)]
    session = FakeSession(rows, failures={10: 2})  # the second page fails twice
    ps = session.prepare("SELECT image_id FROM ks.predictions")
    ps.is_idempotent, ps.fetch_size = True, 10
    got = [r.image_id for page in queries.pages(session, ps) for r in page]
    assert got == [f"i{n}" for n in range(25)]  # no row twice, none lost
    assert [s for s, _ in session.requests] == [None, 10, 10, 10, 20]  # never from the start


def test_a_page_failing_on_every_try_raises_the_driver_error() -> None:
    session = FakeSession([row(image_id="a")] * 5, failures={None: 99}, error=ReadTimeout)
    ps = session.prepare("SELECT image_id FROM ks.predictions")
    ps.is_idempotent = True
    with pytest.raises(ReadTimeout):
        list(queries.pages(session, ps, attempts=3))
    assert len(session.requests) == 3


def test_a_non_retriable_error_is_not_retried() -> None:
    session = FakeSession([row(image_id="a")], failures={None: 1}, error=ValueError)
    ps = session.prepare("x")
    ps.is_idempotent = True
    with pytest.raises(ValueError):
        list(queries.pages(session, ps))
    assert len(session.requests) == 1


def test_count_rows_scans_every_page_under_the_read_profile() -> None:
    session = FakeSession([row(image_id=f"i{n}") for n in range(2500)], failures={1000: 1})
    assert queries.count_rows(session, "predictions", keyspace="ks") == 2500


def test_resolve_one_status_per_image_newer_write_wins() -> None:
    preds = {
        "a": {"label": "cat", "write_time": 200},
        "b": {"label": "cup", "write_time": 100},
        "t": {"label": "dog", "write_time": 50},
    }
    rejs = {
        "b": {"reason": "bad", "write_time": 300},
        "a": {"reason": "old", "write_time": 150},
        "c": {"reason": "x", "write_time": 1},
        "t": {"reason": "tie", "write_time": 50},
    }
    out = queries.resolve(["a", "b", "c", "d", "t", "a"], preds, rejs)
    assert set(out.predictions) == {"a", "t"}  # a newer as a prediction; a tie: prediction
    assert set(out.rejections) == {"b", "c"}  # b's rejection is newer
    assert out.missing == ["d"]
    assert out.shadowed == {"a", "b", "t"}
    assert not set(out.predictions) & set(out.rejections)


def test_by_label_skips_stale_index_rows_and_keeps_fetching_until_full(monkeypatch) -> None:
    hits = [
        row(
            label="cat",
            image_id=f"i{n:02}",
            score=0.9,
            model_name="m",
            model_version="1",
            source="s",
            produced_at=None,
        )
        for n in range(30)
    ]
    session = FakeSession(hits)
    # Every third image has another label now; i01 has no prediction any more.
    current = {f"i{n:02}": {"label": "dog" if n % 3 == 0 else "cat"} for n in range(30)}
    del current["i01"]
    asked: list[list[str]] = []

    def fake_fetch(_s: Any, ids: list[str], **_kw: Any) -> dict[str, Any]:
        asked.append(list(ids))
        return {i: current[i] for i in ids if i in current}

    monkeypatch.setattr(queries, "fetch_predictions", fake_fetch)
    got = queries.by_label(session, "cat", keyspace="ks", limit=10)
    ids = [g["image_id"] for g in got]
    assert len(ids) == 10 and ids == sorted(ids)
    assert "i01" not in ids and all(int(i[1:]) % 3 for i in ids)
    assert len(asked) >= 2  # the first page of 10 held stale rows: it read on
    unverified = queries.by_label(session, "cat", keyspace="ks", limit=10, verify=False)
    assert [g["image_id"] for g in unverified] == [f"i{n:02}" for n in range(10)]


def test_by_label_stops_when_the_label_has_no_more_rows(monkeypatch) -> None:
    session = FakeSession(
        [
            row(
                label="cat",
                image_id="a",
                score=1.0,
                model_name="m",
                model_version="1",
                source="s",
                produced_at=None,
            )
        ]
    )
    monkeypatch.setattr(queries, "fetch_predictions", lambda *_a, **_k: {})
    assert queries.by_label(session, "cat", keyspace="ks", limit=5) == []


def test_stats_counts_each_image_once() -> None:
    preds = [
        {
            "image_id": "a",
            "label": "cat",
            "score": 0.9,
            "model_name": "m",
            "processed_at": 2,
            "write_time": 200,
        },
        {
            "image_id": "b",
            "label": "cup",
            "score": 0.8,
            "model_name": "m",
            "processed_at": 3,
            "write_time": 100,
        },
        {
            "image_id": "c",
            "label": "cat",
            "score": 0.7,
            "model_name": "m",
            "processed_at": 1,
            "write_time": 100,
        },
    ]
    rejs = [
        {"image_id": "b", "stage": "decode", "reason": "corrupt", "write_time": 300},
        {"image_id": "a", "stage": "decode", "reason": "corrupt", "write_time": 100},
        {"image_id": "z", "stage": "infer", "reason": "nan", "write_time": 5},
    ]
    st = queries.summarize(preds, rejs, newest=5)
    assert st["predictions"] == 2 and st["rejections"] == 2
    assert st["by_label"] == {"cat": 2}
    assert st["rejections_by_reason"] == {"corrupt": 1, "nan": 1}
    assert st["rejections_by_stage"] == {"decode": 1, "infer": 1}
    assert [n["image_id"] for n in st["newest"]] == ["a", "c"]
    assert st["in_both_tables"] == 2


def test_the_read_retry_policy_retries_reads_on_the_next_host_and_never_writes() -> None:
    p = cassandra_session.read_retry_policy(max_retries=2)
    for retry_num in (0, 1):
        assert p.on_read_timeout(None, 6, 2, 1, False, retry_num)[0] == p.RETRY_NEXT_HOST
        assert p.on_unavailable(None, 6, 2, 1, retry_num)[0] == p.RETRY_NEXT_HOST
        assert p.on_request_error(None, 6, OperationTimedOut(), retry_num)[0] == p.RETRY_NEXT_HOST
    assert p.on_read_timeout(None, 6, 2, 1, False, 2)[0] == p.RETHROW
    assert p.on_unavailable(None, 6, 2, 1, 2)[0] == p.RETHROW
    assert p.on_write_timeout(None, 6, "SIMPLE", 2, 1, 0)[0] == p.RETHROW


def test_the_read_profile_speculates_and_keeps_a_retry_inside_its_timeout() -> None:
    from infra.settings import CassandraSettings

    prof = cassandra_session.read_profile(CassandraSettings())
    assert prof.speculative_execution_policy.delay == cassandra_session.READ_SPECULATIVE_DELAY_S
    assert prof.speculative_execution_policy.max_attempts >= 1
    # A server read timeout (5 s) plus one more attempt fits in the request timeout.
    assert prof.request_timeout > 2 * 5.0


def test_point_reads_that_fail_retriably_are_asked_again(monkeypatch) -> None:
    import cassandra.concurrent as concurrent

    calls: list[list[str]] = []
    fails = {"b": 1, "c": 1}

    def fake_concurrent(_session: Any, _ps: Any, params: list[tuple[str]], **kw: Any) -> list[Any]:
        assert kw["execution_profile"] == cassandra_session.READ_PROFILE
        ids = [p[0] for p in params]
        calls.append(ids)
        out = []
        for i in ids:
            if fails.get(i, 0) > 0:
                fails[i] -= 1
                out.append((False, OperationTimedOut("slow")))
            else:
                cols = dict.fromkeys(queries.REJECTION_COLUMNS)
                out.append((True, [row(**{**cols, "image_id": i, "reason": "r"})]))
        return out

    monkeypatch.setattr(concurrent, "execute_concurrent_with_args", fake_concurrent)
    session = FakeSession([])
    got = queries.fetch_rejections(session, ["a", "b", "c", "a"], keyspace="ks")
    assert set(got) == {"a", "b", "c"}
    assert calls == [["a", "b", "c"], ["b", "c"]]  # only the failed ones again

    fails.update({"a": 99})
    with pytest.raises(OperationTimedOut):
        queries.fetch_rejections(session, ["a"], keyspace="ks")
    calls.clear()
    monkeypatch.setattr(
        concurrent, "execute_concurrent_with_args", lambda *_a, **_k: [(False, ValueError("bad"))]
    )
    with pytest.raises(ValueError):
        queries.fetch_rejections(session, ["a"], keyspace="ks")


def test_lookup_reads_both_tables_and_keeps_each_ids_newer_row(monkeypatch) -> None:
    import cassandra.concurrent as concurrent

    # (table, id) -> write time; "both" has a newer rejection than its prediction.
    stored = {("predictions", "p"): 5, ("predictions", "both"): 1, ("rejections", "both"): 2}

    def fake_concurrent(_session: Any, ps: Any, params: list[tuple[str]], **_kw: Any) -> list[Any]:
        table = ps.query_string.split(" FROM ks.", 1)[1].split(" ", 1)[0]
        cols = queries.PREDICTION_COLUMNS if table == "predictions" else queries.REJECTION_COLUMNS
        assert "WRITETIME(" in ps.query_string
        out = []
        for (i,) in params:
            wt = stored.get((table, i))
            hit = row(**{**dict.fromkeys(cols), "image_id": i, queries.WRITE_TIME: wt})
            out.append((True, [] if wt is None else [hit]))
        return out

    monkeypatch.setattr(concurrent, "execute_concurrent_with_args", fake_concurrent)
    found = queries.lookup(FakeSession([]), ["p", "both", "none"], keyspace="ks")
    assert set(found.predictions) == {"p"} and set(found.rejections) == {"both"}
    assert found.missing == ["none"] and found.shadowed == {"both"}
