"""Relay mode (PIPELINE_STREAM__WORKER__RELAY): stages that move records unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from schemas.dead_letter import read_dead_letter
from schemas.topics import STAGE_BY_NAME
from stream_app.records import InRecord
from stream_app.relay import RelayStage

ROOT = Path(__file__).resolve().parents[2]


def test_relay_forwards_key_value_and_headers_to_the_next_topic() -> None:
    stage = RelayStage(STAGE_BY_NAME["infer"], "p.")
    recs = [
        InRecord("p.images.decoded", 0, 7, b"k1", b"v1", [("a", b"1"), ("a", b"2")]),
        InRecord("p.images.decoded", 1, 3, None, b"", []),
    ]
    outs = stage.process(recs)
    assert [(o.topic, o.key, o.value, o.headers, o.dead) for o in outs] == [
        ("p.images.inferred", b"k1", b"v1", [("a", b"1"), ("a", b"2")], False),
        ("p.images.inferred", None, b"", [], False),
    ]


def test_relay_turns_a_refused_record_into_its_dead_letter() -> None:
    stage = RelayStage(STAGE_BY_NAME["decode"], "p.")
    recs = [
        InRecord("p.images.raw", 0, 1, b"ok", b"x", []),
        InRecord("p.images.raw", 0, 2, None, None, [], refused="inflate-too-large"),
    ]
    ok, dead = stage.process(recs)
    assert (ok.topic, ok.value) == ("p.images.decoded", b"x")
    assert dead.dead and dead.topic == "p.images.decode.dlq"
    assert read_dead_letter(dead.value, dead.headers)["reason"] == "inflate-too-large"


def test_relay_worker_builds_every_stage_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys, os;"
        "os.environ['PIPELINE_STREAM__WORKER__RELAY']='true';"
        f"os.environ['PIPELINE_STREAM__WORKER__DATA_DIR']={str(tmp_path)!r};"
        "from stream_app.settings import StreamSettings;"
        "from stream_app.app import create_app, _build_processors;"
        "s = StreamSettings(); app, rt = create_app(s);"
        "print(sorted(rt.stats), sorted({type(p).__name__ for p in _build_processors(s, rt).values()}),"
        " 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "['decode', 'infer', 'postprocess'] ['RelayStage'] False"
