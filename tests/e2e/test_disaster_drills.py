"""Disaster drills of issue 14 on the real clusters: backup, restore, replay, rebuild.

One stream of 600 images through the session pipeline (2 stream workers + the sink) is
shared by every drill: 450 published, a backup taken once 150 are stored (the rest still
flowing), then 150 more published after a marker time. Each drill then breaks something
and requires every image to have exactly its one row again, read at LOCAL_QUORUM:

- keyspace dropped: restore + replay since the backup;
- corrupt backup: a flipped byte and a missing file; verify and restore name the file;
- one node's disk lost: removenode + start empty + full repair; reads with another node
  down, and the rebuilt node alone at ONE, return everything;
- bad model deploy: reprocess from the marker with a second model version; the newer
  rows win and each row names its version;
- all three nodes' data lost (last: the costliest): fresh Cassandra, restore + replay;
  then the original data dirs go back, so the cluster is left as it was found.

Every drill restores the cluster in `finally` (nodes up, sink running). They stop nodes
and move data dirs: run this file alone, under the shared lock. Figures (seconds, rows,
bytes, replay rate) are printed (`-s`) and written to <pipeline run dir>/drills.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import assert_accounted

from infra import cassandra_session, groups
from infra.backup import (
    BackupError,
    BackupSection,
    BackupSettings,
    apply,
    kafka_state,
    load_manifest,
    plan,
    restore,
    take_backup,
    verify,
)
from infra.backup.rebuild import rebuild_node
from infra.kafka_retry import Deadline
from infra.local import CASSANDRA, LocalCluster, node_by_name
from infra.settings import CassandraSettings
from orchestration.services import WORKERS_SERVICE
from producers.synthetic import synthetic_items
from schemas.image_id import content_id

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

FIRST, SECOND = 450, 150
BACKUP_AT = 150  # stored rows when the backup is taken
SINK = "sink-1"
V2 = "drill-v2"
FIGURES: dict[str, Any] = {}


@dataclasses.dataclass
class Stream:
    ids: list[str]
    second: list[str]  # published after `marker_ms`
    marker_ms: int
    backup_id: str
    settings: BackupSettings
    run_dir: Path  # the clusters' run dir


def _figure(name: str, value: Any, out: Path) -> None:
    FIGURES[name] = value
    print(f"[drill] {name}: {value}")
    (out / "drills.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def _publish(pipeline, n: int, seed: int) -> list[str]:
    items = list(synthetic_items(n, (160, 120), seed=seed))
    res = pipeline.publish(items)
    assert res.summary.failed == 0, f"producer failures: {res.summary.failures[:3]}"
    return [content_id(it.data) for it in items]


def _wait_all(pipeline, ids: list[str], session: Any = None, timeout_s: float = 300.0) -> Any:
    """Poll until every id is stored or rejected (driver errors while nodes return are
    polled through); then the accounting invariant must hold."""
    from demo.accounting import account

    sess = session or pipeline.session
    deadline = time.monotonic() + timeout_s
    acc = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            acc = account(sess, pipeline.keyspace, ids)
            if not acc.missing:
                break
        time.sleep(1.0)
    assert acc is not None, "no accounting query succeeded"
    assert_accounted(acc, ids, pipeline.diagnose)
    return acc


def _local_cluster(cassandra_cluster) -> LocalCluster:
    """The test backend's own LocalCluster: it carries the clusters' security settings
    (mode, certificates, secrets), which a LocalCluster built from the environment
    might not."""
    lc: LocalCluster = cassandra_cluster.backend.cluster
    return lc


def _bootstrap_roles(lc: LocalCluster, nodes: list[Any]) -> None:
    """As `infra up` does on a fresh cluster: in secure mode the project's roles replace
    the default superuser (infra.cassandra_roles.bootstrap); nothing in plaintext."""
    if not lc.security.secure:
        return
    from infra import cassandra_roles as roles

    roles.bootstrap(
        [n.host for n in nodes],
        nodes[0].port,
        roles.client_ssl_context(lc.security.resolved_ca_file()),
        roles.role_passwords(lc.security.resolved_secrets_dir()),
    )


def _wait_group_empty(pipeline, group: str, timeout_s: float = 60.0) -> None:
    """Until the group has no members (a stopped consumer leaves on close)."""
    adm = kafka_state.admin(pipeline.kafka)
    deadline = time.monotonic() + timeout_s
    while members := kafka_state.members(adm, group, Deadline(30)):
        assert time.monotonic() < deadline, f"group {group} still has members {members}"
        time.sleep(0.5)


def _stop_sink(pipeline) -> None:
    pipeline.services.stop(SINK)
    _wait_group_empty(pipeline, pipeline.sink_group)


def _start_sink(pipeline) -> None:
    pipeline.services.restart(SINK)
    groups.wait_for_group(pipeline.kafka, pipeline.sink_group, 1, timeout_s=120)


def _replay_since(stream: Stream) -> int:
    p = plan(
        stream.settings,
        manifest=load_manifest(stream.settings.backup.root(stream.run_dir) / stream.backup_id),
    )
    apply(stream.settings, p)
    return p.records


@pytest.fixture(scope="module")
def stream(pipeline, cassandra_cluster, tmp_path_factory) -> Iterator[Stream]:
    backend = cassandra_cluster.backend
    if backend.name != "native":
        pytest.skip("the drills need the local clusters' data dirs and JMX (native backend)")
    run_dir = backend.cluster.run_dir
    settings = BackupSettings(
        kafka=pipeline.kafka,
        cassandra=pipeline.cassandra,
        backup=BackupSection(
            dir=str(tmp_path_factory.mktemp("backups")),
            topic_prefix=pipeline.prefix,
            sink_group=pipeline.sink_group,
            stream_group=pipeline.stream_group,
        ),
    )
    t0 = time.monotonic()
    items = list(synthetic_items(FIRST, (160, 120), seed=1401))
    ids = [content_id(it.data) for it in items]
    thread, results = pipeline.publish_in_background(items)
    pipeline.wait_accounted(ids, timeout_s=300, at_least=BACKUP_AT)
    b = take_backup(settings, run_dir, pipeline.session.cluster, pipeline.session)
    _figure("backup_during_stream_s", round(b.manifest.took_s, 2), pipeline.run_dir)
    _figure("backup_rows", b.manifest.row_counts, pipeline.run_dir)
    thread.join(timeout=300)
    assert results and results[0].summary.failed == 0
    # Strictly after every first-batch timestamp, at or before every second-batch one.
    marker_ms = int(time.time() * 1000) + 1
    while time.time() * 1000 < marker_ms:
        pass
    second = _publish(pipeline, SECOND, seed=1402)
    _wait_all(pipeline, ids + second)
    _figure("stream_600_s", round(time.monotonic() - t0, 1), pipeline.run_dir)
    yield Stream(ids + second, second, marker_ms, b.manifest.backup_id, settings, run_dir)


def test_keyspace_dropped(stream, healthy):
    pipeline = healthy
    t0 = time.monotonic()
    _stop_sink(pipeline)
    try:
        pipeline.session.execute(f"DROP KEYSPACE {pipeline.keyspace}", timeout=120)
        res = restore(
            stream.settings,
            stream.run_dir,
            stream.backup_id,
            pipeline.session.cluster,
            pipeline.session,
        )
        after_restore = pipeline.account(stream.ids)
        # The backup came before the second batch: restore alone cannot be complete.
        assert set(stream.second) <= after_restore.missing, (
            "restore holds rows stored after the backup"
        )
        records = _replay_since(stream)
        t_replay = time.monotonic()
    finally:
        _start_sink(pipeline)
    _wait_all(pipeline, stream.ids)
    replay_s = time.monotonic() - t_replay
    _figure("keyspace_dropped_restore_s", round(res.took_s, 2), pipeline.run_dir)
    _figure("replay_records", records, pipeline.run_dir)
    _figure("replay_records_per_s", round(records / replay_s, 1), pipeline.run_dir)
    _figure("drill_keyspace_dropped_s", round(time.monotonic() - t0, 1), pipeline.run_dir)


def test_corrupt_backup_refused(stream, healthy, tmp_path):
    pipeline = healthy
    t0 = time.monotonic()
    src = stream.settings.backup.root(stream.run_dir) / stream.backup_id
    manifest = verify(src)
    victim = max(manifest.files, key=lambda f: f.size)
    for damage in ("flip", "missing"):
        root = tmp_path / damage
        shutil.copytree(src, root / stream.backup_id)
        path = root / stream.backup_id / victim.relpath
        if damage == "flip":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
        else:
            path.unlink()
        with pytest.raises(BackupError, match=victim.relpath):
            verify(root / stream.backup_id)
        settings = stream.settings.model_copy(
            update={"backup": stream.settings.backup.model_copy(update={"dir": str(root)})}
        )
        before = pipeline.account(stream.ids)
        with pytest.raises(BackupError, match=victim.relpath):
            restore(
                settings,
                stream.run_dir,
                stream.backup_id,
                pipeline.session.cluster,
                pipeline.session,
                force=True,
            )
        after = pipeline.account(stream.ids)
        assert after.stored.keys() == before.stored.keys(), "a refused restore changed rows"
    _figure("drill_corrupt_backup_s", round(time.monotonic() - t0, 1), pipeline.run_dir)


def _count_on_one_node(
    host: str, keyspace: str, ids: list[str], pipeline_cassandra: CassandraSettings
) -> int:
    """How many of `ids` the node at `host` holds by itself (consistency ONE, no other
    replica asked): proof that the repair copied the rows there."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    prof = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([host]),
        consistency_level=ConsistencyLevel.ONE,
        request_timeout=30,
    )
    cluster = Cluster(
        [host],
        execution_profiles={EXEC_PROFILE_DEFAULT: prof},
        protocol_version=5,
        **cassandra_session.security_kwargs(pipeline_cassandra),
    )
    try:
        s = cluster.connect(keyspace)
        n = 0
        for table in ("predictions", "rejections"):
            stmt = s.prepare(f"SELECT image_id FROM {table} WHERE image_id IN ?")
            for i in range(0, len(ids), 100):
                n += len(list(s.execute(stmt, [ids[i : i + 100]])))
        return n
    finally:
        cluster.shutdown()


def test_one_node_disk_lost(stream, healthy, cassandra_cluster):
    pipeline = healthy
    t0 = time.monotonic()
    lc = _local_cluster(cassandra_cluster)
    victim, other = "cassandra-3", "cassandra-1"
    data = lc.dirs(node_by_name(victim)).data
    aside = data.with_name("data.drill-lost")
    shutil.rmtree(aside, ignore_errors=True)
    rebuilt = False
    try:
        cassandra_cluster.stop_node(victim)
        data.rename(aside)  # the disk is gone (kept aside only to undo a failed drill)
        res = rebuild_node(stream.run_dir, victim, start=cassandra_cluster.start_node)
        rebuilt = True
        _figure("one_node_repair_s", round(res.repair_s, 1), pipeline.run_dir)
        assert _count_on_one_node(
            node_by_name(victim).host, pipeline.keyspace, stream.ids, pipeline.cassandra
        ) == len(stream.ids)
        cassandra_cluster.stop_node(other)
        try:
            _wait_all(pipeline, stream.ids, timeout_s=90)
        finally:
            cassandra_cluster.start_node(other)
    finally:
        if rebuilt or lc.pid(node_by_name(victim)) is not None:
            shutil.rmtree(aside, ignore_errors=True)
        elif aside.exists():  # the drill failed before the node came back: undo it
            shutil.rmtree(data, ignore_errors=True)
            aside.rename(data)
        for name in cassandra_cluster.node_names():
            cassandra_cluster.start_node(name)
    _figure("drill_one_node_disk_lost_s", round(time.monotonic() - t0, 1), pipeline.run_dir)


def test_bad_model_deploy_reprocess(stream, healthy):
    pipeline = healthy
    t0 = time.monotonic()
    before = _wait_all(pipeline, stream.ids)
    v1 = {r["model_version"] for r in before.stored.values()}
    assert V2 not in v1
    original = pipeline.services.spec(WORKERS_SERVICE)
    pipeline.services.stop(WORKERS_SERVICE)
    try:
        _wait_group_empty(pipeline, pipeline.stream_group)
        p = plan(stream.settings, from_ms=stream.marker_ms, reprocess=True)
        assert p.group == pipeline.stream_group
        assert p.records == len(stream.second), "reprocess would not read exactly the second batch"
        apply(stream.settings, p)
        pipeline.services.start(
            dataclasses.replace(
                original, env={**original.env, "PIPELINE_STREAM__MODEL__VERSION": V2}
            )
        )
        deadline = time.monotonic() + 300
        second = set(stream.second) & set(before.stored)
        while True:
            acc = pipeline.account(stream.ids)
            redone = {i for i in second if acc.stored.get(i, {}).get("model_version") == V2}
            if redone == second or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert redone == second, f"{len(second - redone)} rows still from the old model"
        assert_accounted(acc, stream.ids, pipeline.diagnose)
        first = set(stream.ids) - set(stream.second)
        assert {acc.stored[i]["model_version"] for i in first if i in acc.stored} == v1
        # A replay of the old results (since the backup) must not bring the old model back.
        _stop_sink(pipeline)
        try:
            _replay_since(stream)
        finally:
            _start_sink(pipeline)
        lag_deadline = time.monotonic() + 120
        while (
            groups.group_lag(
                pipeline.kafka, pipeline.sink_group, stream.settings.backup.result_topics
            )["total"]
            > 0
        ):
            assert time.monotonic() < lag_deadline, "sink did not catch up after the replay"
            time.sleep(1.0)
        acc = pipeline.account(stream.ids)
        assert {acc.stored[i]["model_version"] for i in second} == {V2}
    finally:
        pipeline.services.stop(WORKERS_SERVICE)
        pipeline.services.start(original)
        pipeline.wait_ready()
    _figure("drill_bad_model_deploy_s", round(time.monotonic() - t0, 1), pipeline.run_dir)


def test_all_nodes_data_lost(stream, healthy, cassandra_cluster):
    pipeline = healthy
    t0 = time.monotonic()
    lc = _local_cluster(cassandra_cluster)
    nodes = lc.known_nodes(CASSANDRA)
    datas = [lc.dirs(n).data for n in nodes]
    asides = [d.with_name("data.drill-kept") for d in datas]
    for a in asides:
        shutil.rmtree(a, ignore_errors=True)
    _stop_sink(pipeline)
    try:
        lc.down(kind=CASSANDRA)
        for d, a in zip(datas, asides, strict=True):
            d.rename(a)  # every node's disk is gone (the originals go back at the end)
        for n in nodes:  # seed first, each once the previous answers (a fresh cluster)
            cassandra_cluster.start_node(n.name)  # (waits for the old nodes' ports)
        _bootstrap_roles(lc, nodes)
        from infra import cassandra_session

        cluster, session = cassandra_session.connect(pipeline.cassandra)
        try:
            res = restore(stream.settings, stream.run_dir, stream.backup_id, cluster, session)
            _figure("all_nodes_restore_s", round(res.took_s, 2), pipeline.run_dir)
            _replay_since(stream)
            _start_sink(pipeline)
            _wait_all(pipeline, stream.ids, session=session)
        finally:
            cluster.shutdown()
    finally:
        # Leave the cluster as found: the original data dirs back, every node up.
        with contextlib.suppress(Exception):
            _stop_sink(pipeline)
        lc.down(kind=CASSANDRA)
        for d, a in zip(datas, asides, strict=True):
            if a.exists():
                shutil.rmtree(d, ignore_errors=True)
                a.rename(d)
        for n in nodes:
            cassandra_cluster.start_node(n.name)
        _start_sink(pipeline)
    # The original cluster still has every row, read through the harness's own session:
    # every node was down and then refused its login (a fresh cluster before its roles), so
    # only the reconnect watchdog (infra.cassandra_reconnect) brings the nodes back to it.
    _wait_all(pipeline, stream.ids)
    _figure("drill_all_nodes_data_lost_s", round(time.monotonic() - t0, 1), pipeline.run_dir)
