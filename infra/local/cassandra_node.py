"""One Cassandra 5.0 node: cassandra.yaml, logback.xml and its Java 17 command line.

With a `CassandraSecurity` the node is secure: clients must speak TLS (no plaintext
fallback on the CQL port) and log in (PasswordAuthenticator, CassandraAuthorizer), and
node-to-node traffic is mutual TLS with the peer's address checked against its
certificate. PEM files only (PEMBasedSslContextFactory): no keystores, no keytool.
Without one, the node is the development setup: plaintext, anyone let in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from infra.local.topology import NodeSpec

MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
CLUSTER_NAME = "torchstream"

# From Cassandra 5.0's conf/jvm17-server.options: the JDK internals it reaches into.
JAVA17_MODULE_FLAGS = [
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.base/jdk.internal.ref",
            "java.base/sun.nio.ch",
            "java.base/java.lang.ref",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "jdk.unsupported/sun.misc",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.nio",
            "java.base/java.util",
            "java.base/java.util.concurrent",
            "java.base/java.util.concurrent.atomic",
            "java.base/java.lang",
            "java.base/java.lang.reflect",
            "java.base/java.math",
            "java.base/java.net",
        )
    ),
]


PEM_FACTORY = "org.apache.cassandra.security.PEMBasedSslContextFactory"
# system_auth's replication on its creation (first boot only): with the default RF 1 the
# loss of one node can lock every client out (roles are read at QUORUM / LOCAL_ONE).
SYSTEM_AUTH_RF = 3


@dataclass(frozen=True)
class CassandraSecurity:
    """The node's PEM files: `keystore` holds its unencrypted PKCS#8 key followed by its
    certificate chain; `truststore` the CA certificate(s) it accepts from peers."""

    keystore: Path
    truststore: Path


@dataclass(frozen=True)
class CassandraTuning:
    heap_mb: int = 768
    num_tokens: int = 16
    concurrent_reads: int = 8
    concurrent_writes: int = 8
    concurrent_compactors: int = 1
    ring_delay_ms: int = 1000


def data_dirs(storage: Path) -> dict[str, Path]:
    return {
        "data": storage / "data",
        "commitlog": storage / "commitlog",
        "hints": storage / "hints",
        "saved_caches": storage / "saved_caches",
        "cdc_raw": storage / "cdc_raw",
    }


def seeds(cluster: list[NodeSpec]) -> str:
    """Every node is a seed: a node restarting while another is down still finds a peer
    to gossip with (a lone non-seed node refuses to start). New clusters start in order,
    each node after the previous answers CQL, so no node forms a ring of its own."""
    return ",".join(f"{n.host}:{n.ports['storage']}" for n in cluster)


def security_yaml(security: CassandraSecurity | None) -> dict[str, object]:
    """The cassandra.yaml keys that make a node secure (or explicitly open, without)."""
    if security is None:
        return {"authenticator": "AllowAllAuthenticator", "authorizer": "AllowAllAuthorizer"}
    pem = {
        "ssl_context_factory": {"class_name": PEM_FACTORY},
        "keystore": str(security.keystore),
        "truststore": str(security.truststore),
        "protocol": "TLS",
        "accepted_protocols": ["TLSv1.2", "TLSv1.3"],
    }
    return {
        "authenticator": "PasswordAuthenticator",
        "authorizer": "CassandraAuthorizer",
        "role_manager": "CassandraRoleManager",
        # Clients prove who they are by password, so no client certificates; but a
        # plaintext client is refused (optional: false), never served unencrypted.
        "client_encryption_options": {
            **pem,
            "enabled": True,
            "optional": False,
            "require_client_auth": False,
        },
        "server_encryption_options": {
            **pem,
            "internode_encryption": "all",
            "optional": False,
            "require_client_auth": True,
            "require_endpoint_verification": True,
        },
    }


def render_yaml(
    node: NodeSpec,
    cluster: list[NodeSpec],
    storage: Path,
    tuning: CassandraTuning,
    security: CassandraSecurity | None = None,
) -> str:
    """cassandra.yaml as YAML-compatible JSON values, one key per line."""
    d = data_dirs(storage)
    t = tuning
    settings: dict[str, object] = {
        "cluster_name": CLUSTER_NAME,
        "num_tokens": t.num_tokens,
        "allocate_tokens_for_local_replication_factor": 3,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": seeds(cluster)}],
            }
        ],
        "listen_address": node.host,
        "rpc_address": node.host,
        "storage_port": node.ports["storage"],
        "native_transport_port": node.ports["native"],
        "start_native_transport": True,
        # A fresh, empty cluster: joining nodes have nothing to stream.
        "auto_bootstrap": False,
        "storage_compatibility_mode": "NONE",
        "data_file_directories": [str(d["data"])],
        "commitlog_directory": str(d["commitlog"]),
        "hints_directory": str(d["hints"]),
        "saved_caches_directory": str(d["saved_caches"]),
        "cdc_raw_directory": str(d["cdc_raw"]),
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "commitlog_segment_size": "32MiB",
        "hinted_handoff_enabled": True,
        "max_hint_window": "3h",
        **security_yaml(security),
        "concurrent_reads": t.concurrent_reads,
        "concurrent_writes": t.concurrent_writes,
        "concurrent_counter_writes": 4,
        "concurrent_materialized_view_writes": 4,
        "concurrent_compactors": t.concurrent_compactors,
        "memtable_flush_writers": 1,
        "memtable_heap_space": "128MiB",
        "memtable_offheap_space": "128MiB",
        "key_cache_size": "16MiB",
        "file_cache_size": "64MiB",
        "counter_cache_size": "0MiB",
        "compaction_throughput": "64MiB/s",
        "native_transport_max_threads": 32,
        "native_transport_max_frame_size": "16MiB",
        # The sink writes the rows of many events as one UNLOGGED batch (capped at ~20 KiB
        # by its own estimate); the 5 KiB default would log a warning for every batch.
        "batch_size_warn_threshold": "64KiB",
        "batch_size_fail_threshold": "128KiB",
        # ... and its rows belong to many partitions (RF 3 on 3 nodes: every node holds
        # every row, so that costs no extra hops); the default warns above 10.
        "unlogged_batch_across_partitions_warn_threshold": 10000,
        "write_request_timeout": "5000ms",
        "read_request_timeout": "5000ms",
        "range_request_timeout": "10000ms",
        "request_timeout": "10000ms",
        "disk_failure_policy": "stop",
        "commit_failure_policy": "stop",
    }
    lines = ["# generated by infra.local.cassandra_node; rewritten on every start"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def render_logback(level: str = "INFO") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by infra.local.cassandra_node: logs/server.log, 20 MiB x 3 -->
<configuration scan="false">
  <shutdownHook class="ch.qos.logback.core.hook.DelayingShutdownHook"/>
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${{cassandra.logdir}}/server.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${{cassandra.logdir}}/server.log.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="{level}"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <logger name="io.netty" level="WARN"/>
  <!-- Retried every 10s while a peer is down; one line per try is noise. -->
  <logger name="org.apache.cassandra.auth.CassandraRoleManager" level="ERROR"/>
  <root level="{level}"><appender-ref ref="FILE"/></root>
</configuration>
"""


def jvm_options(
    node: NodeSpec,
    *,
    lib: Path,
    conf_dir: Path,
    storage: Path,
    logs_dir: Path,
    tmp_dir: Path,
    tuning: CassandraTuning,
    secure: bool = False,
    cluster_size: int = 3,
) -> list[str]:
    # Read only when system_auth is created (the first boot); later boots ignore it.
    auth_rf = [f"-Dcassandra.system_auth.default_rf={min(SYSTEM_AUTH_RF, cluster_size)}"]
    jamm = sorted(lib.glob("jamm-*.jar"))
    agent = [f"-javaagent:{jamm[0]}"] if jamm else []
    return [
        f"-Xms{tuning.heap_mb}m",
        f"-Xmx{tuning.heap_mb}m",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=300",
        "-XX:InitiatingHeapOccupancyPercent=70",
        "-XX:ParallelGCThreads=1",
        "-XX:ConcGCThreads=1",
        "-XX:CICompilerCount=2",
        "-XX:+PerfDisableSharedMem",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:+UseTLAB",
        "-XX:+ResizeTLAB",
        *agent,
        *JAVA17_MODULE_FLAGS,
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        "-Djava.net.preferIPv4Stack=true",
        "-Djava.awt.headless=true",
        f"-Djava.io.tmpdir={tmp_dir}",
        f"-Dcassandra.config=file://{conf_dir / 'cassandra.yaml'}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={storage}",
        f"-Dcassandra.logdir={logs_dir}",
        f"-Dlogback.configurationFile={conf_dir / 'logback.xml'}",
        f"-Dcassandra.jmx.local.port={node.ports['jmx']}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        f"-Dcassandra.ring_delay_ms={tuning.ring_delay_ms}",
        # Not superuser_setup_delay_ms=0: with a peer down, the role setup task then
        # reschedules itself with no delay and spins (a CPU core and GBs of log).
        # A restarting seed would otherwise wait 10s for peers that start after it.
        "-Dcassandra.block_for_peers_timeout_in_secs=0",
        *(auth_rf if secure else []),
    ]


def server_command(java: Path, lib: Path, conf_dir: Path, jvm_opts: list[str]) -> list[str]:
    return [str(java), *jvm_opts, "-cp", f"{conf_dir}:{lib}/*", MAIN_CLASS]
