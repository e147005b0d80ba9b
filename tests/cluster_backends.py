"""Cluster backends for the tests: native processes, Docker Compose, or external servers.

Chosen by PIPELINE_TEST_BACKEND=native|docker|external (default native). Each backend
offers the same handles, shaped like testcontainers' (get_bootstrap_server(),
get_contact_points(), get_local_datacenter()) plus node control: stop_node (SIGTERM),
kill_node (SIGKILL), start_node (returns once the node serves again) and node_names().
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from infra.local import CASSANDRA, KAFKA, LocalCluster, resolve_run_dir
from infra.local import probes as local_probes
from infra.local.layout import RunDir
from infra.local.topology import MAX_NODES, cassandra_contact_points, kafka_bootstrap
from infra.security import SecuritySettings
from infra.settings import CassandraSettings, KafkaSettings, PipelineSettings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("native", "docker", "external")
KAFKA_SERVICES = [f"kafka-{i}" for i in range(1, MAX_NODES + 1)]
CASSANDRA_SERVICES = [f"cassandra-{i}" for i in range(1, MAX_NODES + 1)]


class Backend:
    """Where the servers come from. ensure(kind) makes that cluster available."""

    name = "?"

    def ensure(self, kind: str) -> None:
        raise NotImplementedError

    def bootstrap_servers(self) -> str:
        raise NotImplementedError

    def contact_points(self) -> list[str]:
        raise NotImplementedError

    def cassandra_port(self) -> int:
        return 9042

    def local_datacenter(self) -> str:
        return "datacenter1"

    def node_names(self, kind: str) -> list[str]:
        return list(KAFKA_SERVICES if kind == KAFKA else CASSANDRA_SERVICES)

    def stop_node(self, name: str) -> None:
        self._no_node_control()

    def kill_node(self, name: str) -> None:
        self._no_node_control()

    def start_node(self, name: str) -> None:
        self._no_node_control()

    def close(self) -> None:
        pass

    def _no_node_control(self) -> None:
        pytest.skip(f"the {self.name} backend cannot stop or start single nodes")

    def security(self) -> SecuritySettings:
        """The security mode and files of the clusters this backend found (default: the
        environment's PIPELINE_SECURITY__...)."""
        return PipelineSettings().security

    def grant_pipeline(
        self, topic_prefix: str = "", stream_group: str | None = None, sink_group: str | None = None
    ) -> None:
        """On a secure cluster, let the services' principals use a test pipeline's own
        topics (`topic_prefix`) and groups (infra.kafka_acls); nothing in plaintext mode."""
        s = self.settings()
        if s.kafka.auth is None:
            return
        from infra.kafka_acls import provision_principals
        from infra.kafka_clients import admin_config

        provision_principals(
            AdminClient(admin_config(s.kafka)),
            s.security.resolved_secrets_dir(),
            topic_prefix=topic_prefix,
            stream_group=stream_group,
            sink_group=sink_group,
        )

    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            kafka=KafkaSettings(bootstrap_servers=self.bootstrap_servers()),
            cassandra=CassandraSettings(
                contact_points=self.contact_points(),
                port=self.cassandra_port(),
                local_datacenter=self.local_datacenter(),
            ),
            security=self.security(),
        )


class NativeBackend(Backend):
    """The clusters of `python -m infra` (run dir from $PIPELINE_RUN_DIR or ./.run).

    A cluster that is already up is reused and left running. One started by a test
    session (owner 'tests' in cluster.json) is stopped when the last test session using
    the run dir ends; each session holds a lease file (<run dir>/test-leases/<pid>) while
    it runs. `python -m infra up` makes the clusters the user's again (owner 'cli')."""

    name = "native"

    def __init__(self) -> None:
        run_dir = resolve_run_dir(
            None if os.environ.get("PIPELINE_RUN_DIR") else REPO_ROOT / ".run"
        )
        self._security = self._found_security(run_dir)
        self.cluster = LocalCluster(run_dir, security=self._security)
        self.ready: set[str] = set()
        self.lease = self.cluster.run_dir / "test-leases" / str(os.getpid())

    @staticmethod
    def _found_security(run_dir: Path) -> SecuritySettings:
        """The mode the run dir's Kafka was formatted in (cluster.json), else the
        environment's; certificates and secrets under that run dir unless settings
        point elsewhere."""
        env = PipelineSettings().security
        recorded = RunDir(run_dir).load_state().get(KAFKA, {})
        mode = recorded.get("security", "plaintext") if recorded.get("nodes") else env.mode
        return env.model_copy(
            update={
                "mode": mode,
                "certs_dir": env.certs_dir or run_dir / "certs",
                "secrets_dir": env.secrets_dir or run_dir / "secrets",
            }
        )

    def security(self) -> SecuritySettings:
        return self._security

    def ensure(self, kind: str) -> None:
        if kind in self.ready:
            return
        from infra.provision import provision

        # A first run resolves both servers at once, even if this session needs one.
        self.cluster.prefetch()
        with self.cluster.lock:
            self.lease.parent.mkdir(parents=True, exist_ok=True)
            self.lease.touch()
            was_running = self.cluster.node_count(kind) > 0 and any(
                self.cluster.pid(n) for n in self.cluster.known_nodes(kind)
            )
            if self.cluster.up(only=kind) and not was_running:
                self.cluster.set_owner(kind, "tests")
        report = provision(
            self.settings(),
            kafka=kind == KAFKA,
            cassandra=kind == CASSANDRA,
            allow_missing_schemas=True,
        )
        log.info("native %s cluster ready (%s)", kind, report.summary())
        self.ready.add(kind)

    def bootstrap_servers(self) -> str:
        return kafka_bootstrap(MAX_NODES)

    def contact_points(self) -> list[str]:
        return cassandra_contact_points(MAX_NODES)

    def stop_node(self, name: str) -> None:
        self.cluster.stop_node(name)

    def kill_node(self, name: str) -> None:
        self.cluster.kill_node(name)

    def start_node(self, name: str) -> None:
        self.cluster.start_node(name, wait=True)

    def close(self) -> None:
        if not self.ready:
            return
        with self.cluster.lock:
            self.lease.unlink(missing_ok=True)
            others = []
            for p in self.lease.parent.glob("*"):
                if _pid_alive(p.name):
                    others.append(p)
                else:
                    p.unlink(missing_ok=True)  # a session that died without cleaning up
            if others:
                log.info(
                    "leaving the clusters up for test sessions %s",
                    ", ".join(p.name for p in others),
                )
                return
            for kind in (KAFKA, CASSANDRA):
                if self.cluster.node_count(kind) and self.cluster.owner(kind) == "tests":
                    self.cluster.down(kind=kind)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class ExternalBackend(Backend):
    """Servers someone else runs, named by PIPELINE_KAFKA__BOOTSTRAP_SERVERS and
    PIPELINE_CASSANDRA__CONTACT_POINTS. No node control."""

    name = "external"

    def __init__(self) -> None:
        self._settings = PipelineSettings()

    def ensure(self, kind: str) -> None:
        from infra.kafka_clients import admin_config

        if kind == KAFKA and not local_probes.kafka_broker_ids(
            self.bootstrap_servers(), 10, client_conf=admin_config(self._settings.kafka)
        ):
            pytest.fail(f"external Kafka at {self.bootstrap_servers()} does not answer")

    def bootstrap_servers(self) -> str:
        return self._settings.kafka.bootstrap_servers

    def contact_points(self) -> list[str]:
        return list(self._settings.cassandra.contact_points)

    def cassandra_port(self) -> int:
        return self._settings.cassandra.port

    def local_datacenter(self) -> str:
        return self._settings.cassandra.local_datacenter


class DockerBackend(Backend):
    """The Kafka and Cassandra services of docker-compose.yml, run by testcontainers'
    DockerCompose; node control through `docker compose stop|kill|up --wait`."""

    name = "docker"
    READY_TIMEOUT = 300.0

    def __init__(self) -> None:
        reason = docker_unavailable()
        if reason:
            pytest.skip(f"PIPELINE_TEST_BACKEND=docker but {reason}")
        from testcontainers.compose import DockerCompose

        self.compose = DockerCompose(
            str(REPO_ROOT), compose_file_name="docker-compose.yml", wait=True, services=[]
        )
        self.up_services: set[str] = set()

    def _compose(self, *args: str) -> None:
        cmd = [*self.compose.compose_command_property, *args]
        subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)

    def ensure(self, kind: str) -> None:
        services = self.node_names(kind)
        if set(services) <= self.up_services:
            return
        self._compose("up", "--wait", "--wait-timeout", str(int(self.READY_TIMEOUT)), *services)
        self.up_services |= set(services)

    def bootstrap_servers(self) -> str:
        return "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"

    def contact_points(self) -> list[str]:
        # cassandra-1 publishes CQL on 127.0.0.1:9042; the driver finds the others.
        return ["127.0.0.1"]

    def stop_node(self, name: str) -> None:
        self._compose("stop", name)

    def kill_node(self, name: str) -> None:
        self._compose("kill", "-s", "SIGKILL", name)

    def start_node(self, name: str) -> None:
        self._compose("up", "--wait", "--wait-timeout", str(int(self.READY_TIMEOUT)), name)

    def close(self) -> None:
        if self.up_services:
            self._compose("down", "--volumes")


def docker_unavailable() -> str:
    """'' if a Docker engine answers a ping, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as e:
        return f"no Docker engine answers ({type(e).__name__}: {str(e)[:120]})"
    return ""


def security_env(security: SecuritySettings) -> dict[str, str]:
    """PIPELINE_SECURITY__ variables that make a service started with another run dir
    (e.g. a temp PIPELINE_RUN_DIR) use these clusters' mode, CA and secret files."""
    return {
        "PIPELINE_SECURITY__MODE": security.mode,
        "PIPELINE_SECURITY__CERTS_DIR": str(security.resolved_certs_dir()),
        "PIPELINE_SECURITY__CA_FILE": str(security.resolved_ca_file()),
        "PIPELINE_SECURITY__SECRETS_DIR": str(security.resolved_secrets_dir()),
    }


def make_backend(env: dict[str, str] | None = None) -> Backend:
    env = dict(os.environ if env is None else env)
    name = env.get("PIPELINE_TEST_BACKEND", "native").strip().lower() or "native"
    if name not in BACKENDS:
        raise pytest.UsageError(f"PIPELINE_TEST_BACKEND={name!r}: use one of {', '.join(BACKENDS)}")
    return {"native": NativeBackend, "docker": DockerBackend, "external": ExternalBackend}[name]()


class _ClusterHandle:
    kind = "?"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def node_names(self) -> list[str]:
        return self.backend.node_names(self.kind)

    def _check(self, name: str) -> None:
        if name not in self.node_names():
            raise ValueError(f"{name!r} is not a {self.kind} node: {self.node_names()}")

    def stop_node(self, name: str) -> None:
        """SIGTERM the node and wait until it has exited."""
        self._check(name)
        self.backend.stop_node(name)

    def kill_node(self, name: str) -> None:
        """SIGKILL the node."""
        self._check(name)
        self.backend.kill_node(name)

    def start_node(self, name: str) -> None:
        """Start the node again (same data) and return once it serves."""
        self._check(name)
        t0 = time.monotonic()
        self.backend.start_node(name)
        log.info("%s back in %.1fs", name, time.monotonic() - t0)


@dataclass(frozen=True)
class TopicSpec:
    """A topic a test needs that the registry does not have (same interface)."""

    name: str
    partitions: int = 3
    replication_factor: int = 3
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        return {"min.insync.replicas": "2", **self.extra}


class KafkaCluster(_ClusterHandle):
    kind = KAFKA

    def get_bootstrap_server(self) -> str:
        return self.backend.bootstrap_servers()

    def admin(self) -> AdminClient:
        """An admin client of the admin principal (TLS + SCRAM on a secure cluster)."""
        from infra.kafka_clients import admin_config

        kafka = self.backend.settings().kafka
        kafka.bootstrap_servers = self.get_bootstrap_server()
        return AdminClient(admin_config(kafka))

    def create_topic(
        self, name: str, partitions: int = 3, replication_factor: int = 3, **configs: str
    ) -> str:
        """Create a topic through infra.provision and wait for its full ISR."""
        from infra.provision import provision_topics

        provision_topics(
            self.backend.settings(),
            [TopicSpec(name, partitions, replication_factor, dict(configs))],
        )
        short = self.wait_full_isr([name], replication_factor)
        assert not short, f"topic {name} has partitions without a full ISR: {short}"
        return name

    def delete_topics(self, names: list[str]) -> None:
        admin = self.admin()  # keep the client alive until the futures complete
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result()

    def wait_full_isr(
        self, topics: list[str], replicas: int = 3, deadline_s: float = 60.0
    ) -> dict[str, list[tuple[int, int]]]:
        """Poll metadata until every partition of topics has `replicas` in-sync replicas.

        Returns {} on success, else {topic: [(partition, isr size), ...]} still short."""
        admin = self.admin()
        end = time.monotonic() + deadline_s
        while True:
            md = admin.list_topics(timeout=10)
            short = {
                t: [
                    (p.id, len(p.isrs))
                    for p in md.topics[t].partitions.values()
                    if len(p.isrs) < replicas
                ]
                for t in topics
                if t in md.topics
            }
            short = {t: v for t, v in short.items() if v}
            short.update({t: [] for t in topics if t not in md.topics})
            if not short or time.monotonic() > end:
                return short
            time.sleep(0.5)


class CassandraCluster(_ClusterHandle):
    kind = CASSANDRA

    def get_contact_points(self) -> list[str]:
        """Hosts (strings) to give the driver; the port is get_port()."""
        return self.backend.contact_points()

    def get_port(self) -> int:
        return self.backend.cassandra_port()

    def get_local_datacenter(self) -> str:
        return self.backend.local_datacenter()
