"""One Kafka 4.x KRaft node (combined broker+controller): configs and command lines.

Plaintext mode: one PLAINTEXT listener for clients and brokers, a PLAINTEXT controller
listener. Secure mode (`KafkaSecurity` given): the BROKER listener (clients and
inter-broker) is SASL_SSL with SCRAM-SHA-512, the CONTROLLER listener is mutual TLS (the
node certificate's CN is its principal), StandardAuthorizer denies what no ACL allows,
and the nodes, the inter-broker user and the admin are super users. The server
properties then hold the inter-broker password, so they are written mode 0600.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

from infra.local.topology import NodeSpec

SCRAM_MECHANISM = "SCRAM-SHA-512"
SECURE_LISTENER = "BROKER"
CONTROLLER_LISTENER = "CONTROLLER"
# mTLS principal of a node: the CN of its certificate (infra.certs: CN = node name).
PRINCIPAL_MAPPING = "RULE:^CN=([^,]+).*$/$1/,DEFAULT"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class KafkaSecurity:
    """What a secure node needs: its PEM keystore (key + chain), the CA it trusts, the
    inter-broker SCRAM user, and the super users besides the nodes themselves."""

    keystore: Path
    truststore: Path
    broker_user: str
    broker_password: str
    super_users: tuple[str, ...]

    def __repr__(self) -> str:  # the password never reaches a log
        return f"KafkaSecurity(keystore={str(self.keystore)!r}, broker_user={self.broker_user!r})"


MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class KafkaTuning:
    heap_mb: int = 512
    max_message_bytes: int = 11 * 1024 * 1024  # > the pipeline's 10 MiB topic limit
    network_threads: int = 2
    io_threads: int = 2
    internal_topic_partitions: int = 10


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding, never starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def valid_cluster_id(cid: str) -> bool:
    if len(cid) != 22 or cid.startswith("-"):
        return False
    try:
        return len(base64.urlsafe_b64decode(cid + "==")) == 16
    except ValueError:
        return False


def _props(items: dict[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in items.items())


def _jaas(user: str, password: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{password}";'
    )


def _listeners(
    node: NodeSpec, cluster: list[NodeSpec], security: KafkaSecurity | None
) -> dict[str, object]:
    broker, controller = node.ports["broker"], node.ports["controller"]
    if security is None:
        return {
            "listeners": f"PLAINTEXT://{node.host}:{broker},CONTROLLER://{node.host}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{node.host}:{broker}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
        }
    b, c = SECURE_LISTENER, CONTROLLER_LISTENER
    bl, cl = b.lower(), c.lower()
    tls = {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": security.keystore,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": security.truststore,
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
    }
    supers = [f"User:{n.name}" for n in cluster] + [f"User:{u}" for u in security.super_users]
    return {
        "listeners": f"{b}://{node.host}:{broker},{c}://{node.host}:{controller}",
        "advertised.listeners": f"{b}://{node.host}:{broker}",
        "listener.security.protocol.map": f"{b}:SASL_SSL,{c}:SSL",
        "controller.listener.names": c,
        "inter.broker.listener.name": b,
        # The node's own TLS identity, used as server on both listeners and as the
        # client of the controller quorum.
        **tls,
        **{f"listener.name.{cl}.{k}": v for k, v in tls.items()},
        f"listener.name.{cl}.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": PRINCIPAL_MAPPING,
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.{bl}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.{bl}.scram-sha-512.sasl.jaas.config": _jaas(
            security.broker_user, security.broker_password
        ),
        "authorizer.class.name": AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(supers),
    }


def render_server_properties(
    node: NodeSpec,
    cluster: list[NodeSpec],
    data_dir: Path,
    tuning: KafkaTuning,
    security: KafkaSecurity | None = None,
) -> str:
    rf = min(3, len(cluster))
    isr = min(2, rf)
    voters = ",".join(f"{n.index}@{n.host}:{n.ports['controller']}" for n in cluster)
    t = tuning
    return "# generated by infra.local.kafka_node; rewritten on every start\n" + _props(
        {
            "process.roles": "broker,controller",
            "node.id": node.index,
            "controller.quorum.voters": voters,
            **_listeners(node, cluster, security),
            "log.dirs": data_dir,
            "num.network.threads": t.network_threads,
            "num.io.threads": t.io_threads,
            "num.replica.fetchers": 1,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 2,
            "log.cleaner.threads": 1,
            "num.partitions": 1,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": t.internal_topic_partitions,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": t.internal_topic_partitions,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "message.max.bytes": t.max_message_bytes,
            "replica.fetch.max.bytes": t.max_message_bytes,
        }
    )


def render_log4j2(level: str = "INFO") -> str:
    """log4j2 .properties config: logs/server.log, rolled at 20 MiB, 3 files kept."""
    return f"""# generated by infra.local.kafka_node
status = warn
name = torchstream-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${{sys:kafka.logs.dir}}/server.log
appender.file.filePattern = ${{sys:kafka.logs.dir}}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
# One line per partition and segment at every start: thousands with many test topics.
logger.storage.name = org.apache.kafka.storage.internals.log
logger.storage.level = WARN
logger.logmanager.name = kafka.log.LogManager
logger.logmanager.level = WARN
logger.replication.name = org.apache.kafka.controller.ReplicationControlManager
logger.replication.level = WARN
logger.configctl.name = org.apache.kafka.controller.ConfigurationControlManager
logger.configctl.level = WARN
logger.partition.name = kafka.cluster.Partition
logger.partition.level = WARN
"""


def jvm_options(heap_mb: int, log4j2_file: Path, logs_dir: Path, tmp_dir: Path) -> list[str]:
    return [
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:ParallelGCThreads=1",
        "-XX:ConcGCThreads=1",
        "-XX:CICompilerCount=2",
        "-XX:+PerfDisableSharedMem",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={tmp_dir}",
        f"-Dlog4j2.configurationFile={log4j2_file}",
        f"-Dkafka.logs.dir={logs_dir}",
    ]


def classpath(lib: Path) -> str:
    return f"{lib}/*"


def server_command(
    java: Path,
    lib: Path,
    props: Path,
    log4j2_file: Path,
    logs_dir: Path,
    tmp_dir: Path,
    heap_mb: int,
) -> list[str]:
    return [
        str(java),
        *jvm_options(heap_mb, log4j2_file, logs_dir, tmp_dir),
        "-cp",
        classpath(lib),
        MAIN_CLASS,
        str(props),
    ]


def scram_arguments(users: dict[str, str]) -> list[str]:
    """`--add-scram` arguments that create SCRAM users in the metadata at format time
    (the brokers need their own user before any AdminClient can add more)."""
    out: list[str] = []
    for name, password in users.items():
        out += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
    return out


def format_command(
    java: Path,
    lib: Path,
    props: Path,
    log4j2_file: Path,
    tmp_dir: Path,
    cluster_id: str,
    scram_users: dict[str, str] | None = None,
) -> list[str]:
    return [
        str(java),
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Djava.io.tmpdir={tmp_dir}",
        f"-Dlog4j2.configurationFile={log4j2_file}",
        # The log config names ${sys:kafka.logs.dir}; unset, log4j made a directory of
        # that literal name in the working directory.
        f"-Dkafka.logs.dir={tmp_dir}",
        "-cp",
        classpath(lib),
        STORAGE_TOOL,
        "format",
        "-t",
        cluster_id,
        "-c",
        str(props),
        *scram_arguments(scram_users or {}),
    ]
