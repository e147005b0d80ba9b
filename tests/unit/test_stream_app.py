"""Building the faust app (no broker needed: nothing connects until the worker starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.app import broker_url, create_app, health_snapshot
from stream_app.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]


def test_broker_url() -> None:
    assert broker_url(["h1:1", "h2:2"]) == "kafka://h1:1;kafka://h2:2"


def test_app_has_one_agent_per_stage_on_registry_topics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_STREAM__TOPIC_PREFIX", "ns.")
    monkeypatch.setenv("PIPELINE_STREAM__WORKER__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1,127.0.0.1:2")
    app, rt = create_app(StreamSettings(), web_port=6200)
    topics = {a.name: set(a.channel.topics) for a in app.agents.values()}
    assert topics == {
        "stream_app.decode": {"ns.images.raw"},
        "stream_app.infer": {"ns.images.decoded"},
        "stream_app.postprocess": {"ns.images.inferred"},
    }
    conf = app.conf
    assert conf.topic_allow_declare is False and conf.topic_replication_factor == 3
    assert conf.producer_acks == -1 and conf.web_port == 6200
    # A micro-batch of decoded images (147 KB each) fits one producer batch.
    assert conf.producer_max_batch_size == 1_048_576 and conf.producer_linger == 0.005
    assert [str(u) for u in conf.broker] == ["kafka://127.0.0.1:1", "kafka://127.0.0.1:2"]
    snap = health_snapshot(app, rt)
    assert [s["stage"] for s in snap["stages"]] == ["decode", "infer", "postprocess"]
    assert snap["model"]["name"] == "efficientnet-lite0"
    for ex in rt.executors.values():
        ex.shutdown()


@pytest.mark.parametrize(
    ("stages", "fuse", "expected"),
    [
        # The default: decode, infer and postprocess run in decode's agent; infer and
        # postprocess keep agents on images.decoded and images.inferred for what an
        # unfused worker (or the unfused past) wrote there.
        ('["decode","infer","postprocess"]', {}, ("decode", "infer", "postprocess")),
        ('["decode","infer","postprocess"]', {"POSTPROCESS": "false"}, ("decode", "infer")),
        ('["decode","infer","postprocess"]', {"DECODE_INFER": "false", "POSTPROCESS": "false"}, ()),
        ('["decode","infer","postprocess"]', {"DECODE_INFER": "false"}, ("infer", "postprocess")),
        ('["infer","postprocess"]', {}, ("infer", "postprocess")),
        ('["decode","infer"]', {}, ("decode", "infer")),
        ('["decode","postprocess"]', {}, ()),  # not neighbours here
        ('["decode"]', {}, ()),  # one stage alone: unfused
        ('["infer"]', {}, ()),
    ],
)
def test_stages_are_fused_only_where_one_worker_runs_both_neighbours(
    monkeypatch: pytest.MonkeyPatch, stages: str, fuse: dict[str, str], expected: tuple
) -> None:
    from stream_app.app import Runtime, _build_processors
    from stream_app.fused import FusedStages

    monkeypatch.setenv("PIPELINE_STREAM__WORKER__STAGES", stages)
    for link, on in fuse.items():
        monkeypatch.setenv(f"PIPELINE_STREAM__WORKER__FUSE_{link}", on)
    settings = StreamSettings()
    procs = _build_processors(settings, Runtime(settings))
    assert sorted(procs) == sorted(json.loads(stages))
    fused = [p for p in procs.values() if isinstance(p, FusedStages)]
    assert (tuple(s.name for s in fused[0].stages) if fused else ()) == expected
    if not fused:
        return
    (chain,) = fused
    assert procs[expected[0]] is chain
    for stage, name in zip(chain.stages[1:], expected[1:], strict=True):
        # Each later stage keeps an idle agent on its own source, with a processor of
        # its own: two executor threads, two Inferencers (not thread-safe), one model.
        twin = procs[name]
        assert type(twin) is type(stage) and twin is not stage
        if name == "infer":
            assert twin.inferencer is not stage.inferencer  # type: ignore[attr-defined]
            assert twin.inferencer.model is stage.inferencer.model  # type: ignore[attr-defined]


def test_producer_is_idempotent() -> None:
    from faust.transport.drivers import aiokafka as drv

    from stream_app import faust_seam

    faust_seam.install()

    assert drv.Transport.Producer._settings_extra(None) == {  # type: ignore[arg-type]
        "acks": "all",
        "enable_idempotence": True,
    }


def test_decode_and_postprocess_workers_do_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, os;"
        "os.environ['PIPELINE_STREAM__WORKER__STAGES']='[\"decode\",\"postprocess\"]';"
        f"os.environ['PIPELINE_STREAM__WORKER__DATA_DIR']={str(tmp_path)!r};"
        "from stream_app.settings import StreamSettings;"
        "from stream_app.app import create_app;"
        "app, rt = create_app(StreamSettings());"
        "print(sorted(rt.stats), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "['decode', 'postprocess'] False"


def test_the_worker_freezes_its_start_up_heap_out_of_the_collectors_walks() -> None:
    import gc

    from stream_app.worker import freeze_startup_heap

    alive = [[i] for i in range(5000)]  # start-up state: the model, the app, modules
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(alive) == 5000
        assert gc.get_freeze_count() == frozen
        # A full collection no longer walks them: no generation holds them any more.
        tracked = {id(o) for gen in range(3) for o in gc.get_objects(generation=gen)}
        assert not any(id(o) in tracked for o in alive)
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made after start-up is still collected
        del garbage
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
