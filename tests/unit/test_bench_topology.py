"""The bench's services only use groups its provisioning grants on a secure cluster."""

from __future__ import annotations

from bench import topology
from infra.kafka_acls import pipeline_grants
from infra.security import KAFKA_SINK, KAFKA_STREAM


def _granted_groups(principal: str) -> set[str]:
    out: set[str] = set()
    for prefix, (stream_group, sink_group) in topology.GROUPS.items():
        out |= {
            g.name
            for g in pipeline_grants(prefix, stream_group, sink_group)
            if g.principal == principal and g.resource == "group"
        }
    return out


def _specs() -> list:
    return [
        *topology.pipeline_specs(),
        *topology.faust_transport_specs(),
        *topology.transport_specs(),
    ]


def test_every_stream_worker_app_id_is_granted():
    app_ids = {
        s.env["PIPELINE_STREAM__WORKER__APP_ID"]
        for s in _specs()
        if s.env and "PIPELINE_STREAM__WORKER__APP_ID" in s.env
    }
    assert app_ids == {topology.PIPELINE_APP_ID, topology.FAUST_RELAY_APP_ID}
    assert app_ids <= _granted_groups(KAFKA_STREAM)


def test_every_sink_group_is_granted():
    groups = {
        s.env["PIPELINE_SINK__GROUP_ID"]
        for s in _specs()
        if s.env and "PIPELINE_SINK__GROUP_ID" in s.env
    }
    assert len(groups) == 3
    assert groups <= _granted_groups(KAFKA_SINK)


def test_each_prefix_of_the_specs_has_its_groups():
    prefixes = {
        s.env.get("PIPELINE_STREAM__TOPIC_PREFIX")
        or s.env["PIPELINE_SINK__PREDICTIONS_TOPIC"].split("images.")[0]
        for s in _specs()
        if s.env
    }
    assert prefixes == set(topology.GROUPS)
