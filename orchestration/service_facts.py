"""What orchestration knows about the services, asked of their own settings.

Module names, consumer-group ids, ports and the environment variable of the sink's
metrics port are read from `stream_app.settings`, `consumers.settings` and the sink's
metrics settings (`consumers.metrics`), never copied as strings: a renamed group or a
moved default changes here by itself. Importing these settings modules loads no torch
and no Faust (tests/unit/test_layers.py checks it).

Group ids are built from the caller's environment (`PIPELINE_STREAM__WORKER__APP_ID`,
`PIPELINE_SINK__GROUP_ID`), the same way the services build them, so `pipeline up`
waits for the groups the services actually join.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from consumers.settings import MetricsSection, SinkMetricsSettings, SinkSettings
from stream_app.settings import StreamSettings, WorkerSettings

# `python -m <module>` of each service: the package its settings class lives in.
STREAM_MODULE = StreamSettings.__module__.partition(".")[0]
CONSUMERS_MODULE = SinkSettings.__module__.partition(".")[0]

# Defaults: the first worker's web port (worker i serves on base+i) and the sink's
# metrics port. Read from the fields, not from the environment, so that what a spec
# records never depends on who built it.
WORKER_WEB_PORT_DEFAULT: int = WorkerSettings.model_fields["web_port"].default
SINK_METRICS_PORT_DEFAULT: int = MetricsSection.model_fields["port"].default


def env_var(settings_cls: type[BaseSettings], *path: str) -> str:
    """The environment variable that sets `path` (e.g. "metrics", "port") of a
    settings class, from its own prefix and nesting delimiter."""
    config = settings_cls.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = str(config.get("env_nested_delimiter") or "")
    if len(path) > 1 and not delimiter:
        raise ValueError(f"{settings_cls.__name__} has no nested delimiter for {path}")
    model: type[BaseModel] | None = settings_cls
    for part in path:  # fail loudly on a field that does not exist
        if model is None or part not in model.model_fields:
            raise KeyError(f"{settings_cls.__name__} has no field {'.'.join(path)}")
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None
    return (prefix + delimiter.join(path)).upper()


# The variables a worker's web port and the sink's metrics port are read from.
WORKER_WEB_PORT_ENV = env_var(StreamSettings, "stream", "worker", "web_port")
SINK_METRICS_PORT_ENV = env_var(SinkMetricsSettings, "metrics", "port")


def stream_group() -> str:
    """The stream workers' consumer group (their Faust app id)."""
    return StreamSettings().stream.worker.app_id


def sink_group() -> str:
    """The sink's consumer group."""
    return SinkSettings().sink.group_id
