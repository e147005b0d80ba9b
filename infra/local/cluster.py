"""LocalCluster: start, stop, kill and inspect the local Kafka and Cassandra nodes."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from infra.local import cassandra_node, kafka_node, maven, ports, probes, procs
from infra.local.errors import InfraError
from infra.local.jvm import find_java_home
from infra.local.layout import NodeDirs, RunDir, RunDirLock
from infra.local.topology import (
    CASSANDRA,
    KAFKA,
    KINDS,
    MAX_NODES,
    NodeSpec,
    kafka_bootstrap,
    node_by_name,
    nodes,
)
from infra.security import (
    KAFKA_ADMIN,
    KAFKA_BROKER,
    KAFKA_PRINCIPALS,
    ensure_secret,
    mask,
)

if TYPE_CHECKING:
    from infra.security import SecuritySettings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run a LocalCluster method holding the run dir's lock (see RunDirLock)."""

    @functools.wraps(method)
    def wrapper(self: LocalCluster, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


KAFKA_READY_TIMEOUT = 180.0
CASSANDRA_NODE_TIMEOUT = 240.0
CASSANDRA_RING_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
TAIL_LINES = 30


class LocalCluster:
    """The clusters under one run dir. Every method is safe to call from a new process:
    what is running is read back from pid files, never from memory."""

    def __init__(
        self,
        run_dir: Path,
        *,
        kafka_tuning: kafka_node.KafkaTuning | None = None,
        cassandra_tuning: cassandra_node.CassandraTuning | None = None,
        security: SecuritySettings | None = None,
    ) -> None:
        self.run = RunDir(run_dir)
        self.lock = RunDirLock(run_dir)
        self.kafka_tuning = kafka_tuning or kafka_node.KafkaTuning()
        self.cassandra_tuning = cassandra_tuning or cassandra_node.CassandraTuning()
        self._java_home: Path | None = None
        if security is None:  # the mode of this process's environment (PIPELINE_SECURITY__)
            from infra.settings import PipelineSettings

            security = PipelineSettings().security
        self.security = security

    # ---- what exists ---------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def node_count(self, kind: str) -> int:
        """Nodes of kind this run dir was brought up with (0 if never)."""
        return int(self.run.load_state().get(kind, {}).get("nodes", 0))

    def owner(self, kind: str) -> str:
        """Who brought the cluster up: 'cli' (a person or make) or 'tests' (a test session,
        which stops it again when the last session ends)."""
        return str(self.run.load_state().get(kind, {}).get("owner", "cli"))

    @_locked
    def set_owner(self, kind: str, owner: str) -> None:
        state = self.run.load_state()
        if kind in state:
            state[kind]["owner"] = owner
            self.run.save_state(state)

    def known_nodes(self, kind: str | None = None) -> list[NodeSpec]:
        """The nodes of the recorded topology; the default 3+3 if nothing is recorded."""
        state = self.run.load_state()
        out: list[NodeSpec] = []
        for k in KINDS if kind is None else (kind,):
            n = int(state.get(k, {}).get("nodes", 0)) if state else MAX_NODES
            if n:
                out += nodes(k, n)
        return out

    def dirs(self, node: NodeSpec) -> NodeDirs:
        return self.run.node(node.name)

    def pid(self, node: NodeSpec) -> int | None:
        """The node's pid if the recorded process is still our JVM, else None."""
        d = self.dirs(node)
        pid = procs.read_pid(d.pid_file)
        return pid if procs.is_ours(pid, d.marker) else None

    def node_ready(self, node: NodeSpec) -> bool:
        if node.kind == KAFKA:
            return ports.port_open(node.host, node.port)
        return probes.cql_answers(node.host, node.port, ssl_context=self._cql_ssl())

    def node_status(self, node: NodeSpec) -> dict[str, Any]:
        pid = self.pid(node)
        up = pid is not None and self.node_ready(node)
        return {
            "name": node.name,
            "kind": node.kind,
            "state": "up" if up else "down",
            "pid": pid,
            "address": node.address,
        }

    def status(self) -> dict[str, Any]:
        rows = [self.node_status(n) for n in self.known_nodes()]
        kafka_up = [
            n
            for n, r in zip(self.known_nodes(), rows, strict=True)
            if n.kind == KAFKA and r["state"] == "up"
        ]
        brokers = 0
        if kafka_up:
            brokers = len(
                probes.kafka_broker_ids(
                    ",".join(n.address for n in kafka_up), client_conf=self._kafka_client_conf()
                )
            )
        return {
            "nodes": rows,
            "kafka": {"brokers": brokers},
            "cassandra": {
                "up_nodes": sum(1 for r in rows if r["kind"] == CASSANDRA and r["state"] == "up")
            },
        }

    def is_up(self, kind: str, count: int) -> bool:
        """All `count` nodes of kind run and answer, and the recorded topology matches."""
        if self.node_count(kind) != count:
            return False
        want = nodes(kind, count)
        if not all(self.pid(n) and self.node_ready(n) for n in want):
            return False
        if kind == KAFKA:
            return (
                len(
                    probes.kafka_broker_ids(
                        kafka_bootstrap(count), client_conf=self._kafka_client_conf()
                    )
                )
                == count
            )
        return True

    def log_tail(self, name: str, lines: int = TAIL_LINES) -> str:
        """The tail of the node's server log, then what the JVM printed since its last
        start (errors from before logging was up, e.g. a bad flag or a missing class)."""
        d = self.dirs(node_by_name(name))
        out = procs.tail(d.server_log, lines)
        stdout = procs.tail(d.log_file, 400).split("\n==== ")[-1].splitlines()
        extra = [ln for ln in stdout[1:] if not ln.startswith("WARNING: ")]
        if extra:
            out += ("\n" if out else "") + "--- stdout/stderr:\n" + "\n".join(extra[-lines:])
        return out

    # ---- bring up ------------------------------------------------------------------

    def java(self) -> Path:
        if self._java_home is None:
            self._java_home = find_java_home()
        return self._java_home / "bin" / "java"

    def _lib(self, kind: str) -> Path:
        self.java()
        arts = maven.KAFKA_ARTIFACTS if kind == KAFKA else maven.CASSANDRA_ARTIFACTS
        assert self._java_home is not None
        return maven.ensure(arts, self._java_home)

    @_locked
    def prefetch(self, kinds: list[str] | tuple[str, ...] = KINDS) -> dict[str, Path]:
        """Resolve the servers' jars (in parallel on a first run; network-bound, separate
        lib dirs); a no-op once they are cached."""
        self.java()
        with ThreadPoolExecutor(len(kinds)) as pool:
            return dict(zip(kinds, pool.map(self._lib, kinds), strict=True))

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH")
        }
        assert self._java_home is not None
        env["JAVA_HOME"] = str(self._java_home)
        return env

    @_locked
    def up(
        self,
        kafka_nodes: int = MAX_NODES,
        cassandra_nodes: int = MAX_NODES,
        only: str | None = None,
    ) -> bool:
        """Start whatever of the requested clusters is not running; wait until ready.

        Returns False if everything was already up (nothing done)."""
        want = {KAFKA: kafka_nodes, CASSANDRA: cassandra_nodes}
        kinds = [k for k in KINDS if only in (None, k) and want[k] > 0]
        if KAFKA in kinds:
            self._check_kafka_mode()
        if CASSANDRA in kinds:
            self._check_cassandra_mode()
        todo = [k for k in kinds if not self.is_up(k, want[k])]
        if not todo:
            log.info("already up: %s", ", ".join(f"{want[k]} {k}" for k in kinds))
            return False
        self.java()
        for k in todo:  # fail fast, before any download
            for n in nodes(k, want[k]):
                if self.pid(n) is None:
                    self._preflight(n)
        libs = self.prefetch(todo)
        state = self.run.load_state()
        for k in todo:
            recorded = int(state.get(k, {}).get("nodes", 0))
            if recorded and recorded != want[k] and self._has_data(k, recorded):
                raise InfraError(
                    f"{self.run_dir} holds a {recorded}-node {k} cluster, {want[k]} asked; "
                    f"run `python -m infra down --wipe` first"
                )
        started = time.monotonic()
        pending_kafka: list[NodeSpec] = []
        if KAFKA in todo:
            pending_kafka = self._spawn_kafka(nodes(KAFKA, want[KAFKA]), libs[KAFKA], state)
        if CASSANDRA in todo:
            state.setdefault(CASSANDRA, {}).update(
                nodes=want[CASSANDRA], security=self.security.mode
            )
            self.run.save_state(state)
            self._start_cassandra(nodes(CASSANDRA, want[CASSANDRA]), libs[CASSANDRA])
        if KAFKA in todo:
            self._wait_kafka(nodes(KAFKA, want[KAFKA]), pending_kafka)
        log.info("up in %.1fs", time.monotonic() - started)
        return True

    def _has_data(self, kind: str, count: int) -> bool:
        return any(
            any(self.dirs(n).data.iterdir())
            for n in nodes(kind, count)
            if self.dirs(n).data.is_dir()
        )

    def _preflight(self, node: NodeSpec, wait_s: float = 0.0) -> None:
        ports.check_ports_free(node, wait_s)

    # Kafka: format once, start all nodes at once (each blocks until a quorum exists).

    def _spawn_kafka(
        self, cluster: list[NodeSpec], lib: Path, state: dict[str, Any]
    ) -> list[NodeSpec]:
        to_start = [n for n in cluster if self.pid(n) is None]
        for n in to_start:
            self._preflight(n)
        kstate = state.setdefault(KAFKA, {})
        cid = kstate.get("cluster_id")
        if not cid or not kafka_node.valid_cluster_id(cid):
            cid = kafka_node.new_cluster_id()
        kstate.update(nodes=len(cluster), cluster_id=cid, security=self.security.mode)
        self.run.save_state(state)
        for n in to_start:
            self._write_kafka_conf(n, cluster)
        unformatted = [n for n in to_start if not (self.dirs(n).data / "meta.properties").exists()]
        if unformatted:
            log.info(
                "kafka: formatting storage of %s (cluster id %s)",
                ", ".join(n.name for n in unformatted),
                cid,
            )
            scram = self._kafka_bootstrap_users()
            with ThreadPoolExecutor(len(unformatted)) as pool:
                list(pool.map(lambda n: self._format_kafka(n, lib, cid, scram), unformatted))
        for n in to_start:
            self._spawn_kafka_node(n, lib)
        return to_start

    def _write_kafka_conf(self, node: NodeSpec, cluster: list[NodeSpec]) -> None:
        d = self.dirs(node)
        d.create()
        props = d.conf / "server.properties"
        # Secure mode puts the inter-broker password in it: private from the first byte.
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                kafka_node.render_server_properties(
                    node, cluster, d.data, self.kafka_tuning, self._kafka_security(node)
                )
            )
        (d.conf / "log4j2.properties").write_text(kafka_node.render_log4j2())

    def _format_kafka(
        self, node: NodeSpec, lib: Path, cid: str, scram_users: dict[str, str] | None = None
    ) -> None:
        d = self.dirs(node)
        cmd = kafka_node.format_command(
            self.java(),
            lib,
            d.conf / "server.properties",
            d.conf / "log4j2.properties",
            d.tmp,
            cid,
            scram_users,
        )
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self._env(), check=False, timeout=300
        )
        if proc.returncode != 0:
            raise InfraError(
                f"{node.name}: formatting Kafka storage failed (exit {proc.returncode})",
                detail=mask((proc.stdout + proc.stderr).strip()[-3000:]),
            )

    # Kafka security: what secure mode adds (see kafka_node and docs/security.md).

    def _check_kafka_mode(self) -> None:
        """A run dir's Kafka keeps the mode it was formatted in: asking for the other one
        is a clear error here, not a start that hangs on listeners nobody speaks."""
        recorded = self.run.load_state().get(KAFKA, {})
        if not recorded.get("nodes") or not self._has_data(KAFKA, int(recorded["nodes"])):
            return
        was = recorded.get("security", "plaintext")  # recorded since secure mode exists
        if was != self.security.mode:
            raise InfraError(
                f"{self.run_dir} holds a Kafka cluster formatted in {was} mode, but "
                f"PIPELINE_SECURITY__MODE={self.security.mode} is asked; set "
                f"PIPELINE_SECURITY__MODE={was}, or use another PIPELINE_RUN_DIR, or "
                f"`python -m infra down --wipe` (deletes its data) first"
            )

    def _kafka_secret(self, principal: str) -> str:
        return ensure_secret(self._secrets_dir(), "kafka", principal)

    def _kafka_bootstrap_users(self) -> dict[str, str]:
        """SCRAM users created at format time: the brokers' own and the admin (who adds
        the others with the AdminClient). Every principal's secret is made here, once."""
        if not self.security.secure:
            return {}
        for principal in KAFKA_PRINCIPALS:
            self._kafka_secret(principal)
        return {u: self._kafka_secret(u) for u in (KAFKA_BROKER, KAFKA_ADMIN)}

    def _kafka_security(self, node: NodeSpec) -> kafka_node.KafkaSecurity | None:
        if not self.security.secure:
            return None
        from infra.certs import ensure_node_cert

        cert = ensure_node_cert(self._certs_dir(), node.name)
        return kafka_node.KafkaSecurity(
            keystore=cert.pem,
            truststore=self.security.ca_file or cert.ca_cert,
            broker_user=KAFKA_BROKER,
            broker_password=self._kafka_secret(KAFKA_BROKER),
            super_users=(KAFKA_BROKER, KAFKA_ADMIN),
        )

    def _kafka_client_conf(self) -> dict[str, Any]:
        """librdkafka settings of the admin principal (probes, provisioning)."""
        if not self.security.secure:
            return {}
        from infra.certs import ensure_ca

        ca = self.security.ca_file or ensure_ca(self._certs_dir())[0]
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": kafka_node.SCRAM_MECHANISM,
            "sasl.username": KAFKA_ADMIN,
            "sasl.password": self._kafka_secret(KAFKA_ADMIN),
            "ssl.ca.location": str(ca),
        }

    def _spawn_kafka_node(self, node: NodeSpec, lib: Path) -> None:
        d = self.dirs(node)
        cmd = kafka_node.server_command(
            self.java(),
            lib,
            d.conf / "server.properties",
            d.conf / "log4j2.properties",
            d.logs,
            d.tmp,
            self.kafka_tuning.heap_mb,
        )
        self._spawn(node, cmd)

    def _spawn(self, node: NodeSpec, cmd: list[str]) -> int:
        d = self.dirs(node)
        procs.rotate(d.log_file, max_bytes=10 * 1024 * 1024)
        with open(d.log_file, "a") as f:
            f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {node.name}\n")
        pid = procs.spawn(cmd, log_path=d.log_file, cwd=d.root, env=self._env())
        procs.write_pid(d.pid_file, pid)
        log.info("%s: started pid %d (%s), log %s", node.name, pid, node.address, d.log_file)
        return pid

    def _exited(self, node: NodeSpec) -> bool:
        """Whether a node we are waiting for has exited. A node this process spawned is
        judged by its exit status; the /proc ownership check alone once reported a
        starting Cassandra JVM as gone (CI, 2026-11-26), so it only decides for nodes
        started elsewhere, and a disagreement is logged with what it saw."""
        d = self.dirs(node)
        pid = procs.read_pid(d.pid_file)
        running = procs.child_running(pid)
        ours = procs.is_ours(pid, d.marker)
        if running is not None and running != ours:
            log.warning(
                "%s: ownership check says %s but the process %s (%s)",
                node.name,
                "ours" if ours else "not ours",
                "runs" if running else "exited",
                procs.describe(pid, d.marker),
            )
        return not running if running is not None else not ours

    def _exit_reason(self, node: NodeSpec) -> str:
        d = self.dirs(node)
        return f"exited during start ({procs.describe(procs.read_pid(d.pid_file), d.marker)})"

    def _died(self, started: list[NodeSpec]) -> str | None:
        for n in started:
            if self._exited(n):
                return n.name
        return None

    def _fail(self, name: str, what: str) -> InfraError:
        tail = self.log_tail(name)
        return InfraError(f"{name}: {what}", detail=f"--- last lines of {name}'s log:\n{tail}")

    def _wait_kafka(
        self, cluster: list[NodeSpec], started: list[NodeSpec], timeout: float = KAFKA_READY_TIMEOUT
    ) -> None:
        want = {n.index for n in cluster}
        bootstrap = ",".join(n.address for n in cluster)
        log.info("kafka: waiting for %d brokers", len(cluster))
        conf = self._kafka_client_conf()

        def probe() -> bool:
            # Each (re)started node must answer metadata itself: a killed broker stays
            # listed by the others until its session times out.
            for n in started:
                if not ports.port_open(n.host, n.port) or n.index not in probes.kafka_broker_ids(
                    n.address, client_conf=conf
                ):
                    return False
            return want <= probes.kafka_broker_ids(bootstrap, client_conf=conf)

        def abort() -> str | None:
            dead = self._died(started)
            return f"{dead} exited during start" if dead else None

        try:
            ok = probes.poll_until(probe, timeout=timeout, interval=1.0, abort=abort)
        except RuntimeError as e:
            raise self._fail(str(e).split()[0], str(e).split(" ", 1)[1]) from None
        if not ok:
            seen = probes.kafka_broker_ids(bootstrap, client_conf=conf)
            missing = [n for n in cluster if n.index not in seen]
            name = missing[0].name if missing else cluster[0].name
            raise self._fail(
                name,
                f"not registered as a broker after {timeout:.0f}s (brokers seen: {sorted(seen)})",
            )
        log.info("kafka: %d brokers ready", len(cluster))

    # Cassandra: seed first, then one node at a time, each once the previous answers CQL.

    def _certs_dir(self) -> Path:
        return (self.security.certs_dir or self.run_dir / "certs").expanduser().resolve()

    def _secrets_dir(self) -> Path:
        return (self.security.secrets_dir or self.run_dir / "secrets").expanduser().resolve()

    def _cassandra_security(self, node: NodeSpec) -> cassandra_node.CassandraSecurity | None:
        """The node's PEM files in secure mode (made once under the certs dir), else None."""
        if not self.security.secure:
            return None
        from infra.certs import ensure_node_cert

        cert = ensure_node_cert(self._certs_dir(), node.name)
        ca = self.security.ca_file or cert.ca_cert
        return cassandra_node.CassandraSecurity(keystore=cert.pem, truststore=ca)

    def _cql_ssl(self) -> ssl.SSLContext | None:
        """What a probe speaks to a CQL port: TLS trusting our CA in secure mode."""
        if not self.security.secure:
            return None
        from infra.cassandra_roles import client_ssl_context
        from infra.certs import ensure_ca

        ca = self.security.ca_file or ensure_ca(self._certs_dir())[0]
        return client_ssl_context(Path(ca))

    def _check_cassandra_mode(self) -> None:
        """A run dir's Cassandra keeps the mode it first booted in (its roles, its
        system_auth): asking for the other one is a clear error, not a ring that never
        forms because nobody speaks its protocol."""
        recorded = self.run.load_state().get(CASSANDRA, {})
        if not recorded.get("nodes") or not self._has_data(CASSANDRA, int(recorded["nodes"])):
            return
        was = recorded.get("security", "plaintext")  # recorded since secure mode exists
        if was != self.security.mode:
            raise InfraError(
                f"{self.run_dir} holds a Cassandra cluster first started in {was} mode, but "
                f"PIPELINE_SECURITY__MODE={self.security.mode} is asked; set "
                f"PIPELINE_SECURITY__MODE={was}, or use another PIPELINE_RUN_DIR, or "
                f"`python -m infra down --wipe` (deletes its data) first"
            )

    def _cassandra_logins(self) -> list[Any]:
        """Auth providers for the ring probe, in order: none in plaintext mode; else the
        admin role once the roles exist, the default superuser before (a first boot), and
        the other one as a fallback (the run state may lag a crash)."""
        if not self.security.secure:
            return [None]
        from cassandra.auth import PlainTextAuthProvider

        from infra import cassandra_roles as roles

        admin_pw = roles.role_passwords(self._secrets_dir())[roles.ADMIN]
        logins = [
            PlainTextAuthProvider(roles.ADMIN, admin_pw),
            PlainTextAuthProvider(roles.DEFAULT_SUPERUSER, roles.DEFAULT_SUPERUSER_PASSWORD),
        ]
        if not self.run.load_state().get(CASSANDRA, {}).get("roles"):
            logins.reverse()
        return logins

    def _start_cassandra(self, cluster: list[NodeSpec], lib: Path) -> None:
        for n in cluster:
            if self.pid(n) is None:
                self._preflight(n)
        for n in cluster:
            if self.pid(n) is not None and probes.cql_answers(
                n.host, n.port, ssl_context=self._cql_ssl()
            ):
                continue
            if self.pid(n) is None:
                self._spawn_cassandra_node(n, lib)
            self._wait_cql(n)
        self._wait_ring(cluster)
        if self.security.secure:
            self._bootstrap_roles(cluster)

    def _bootstrap_roles(self, cluster: list[NodeSpec]) -> None:
        """The project's roles replace the default superuser (infra.cassandra_roles)."""
        from infra import cassandra_roles as roles

        ssl_context = self._cql_ssl()
        assert ssl_context is not None
        report = roles.bootstrap(
            [n.host for n in cluster],
            cluster[0].port,
            ssl_context,
            roles.role_passwords(self._secrets_dir()),
        )
        log.info(
            "cassandra: roles ready in %.1fs (admin %s, default superuser %s, roles %s)",
            report.seconds,
            "created" if report.admin_created else "present",
            "disabled now" if report.default_superuser_disabled else "already disabled",
            ", ".join(report.roles),
        )
        state = self.run.load_state()
        state.setdefault(CASSANDRA, {})["roles"] = True
        self.run.save_state(state)

    def _spawn_cassandra_node(self, node: NodeSpec, lib: Path) -> None:
        d = self.dirs(node)
        d.create()
        storage = d.data
        for p in cassandra_node.data_dirs(storage).values():
            p.mkdir(parents=True, exist_ok=True)
        cluster = nodes(CASSANDRA, self.node_count(CASSANDRA))
        security = self._cassandra_security(node)
        (d.conf / "cassandra.yaml").write_text(
            cassandra_node.render_yaml(node, cluster, storage, self.cassandra_tuning, security)
        )
        (d.conf / "logback.xml").write_text(cassandra_node.render_logback())
        opts = cassandra_node.jvm_options(
            node,
            lib=lib,
            conf_dir=d.conf,
            storage=storage,
            logs_dir=d.logs,
            tmp_dir=d.tmp,
            tuning=self.cassandra_tuning,
            secure=security is not None,
            cluster_size=len(cluster),
        )
        self._spawn(node, cassandra_node.server_command(self.java(), lib, d.conf, opts))

    def _wait_cql(self, node: NodeSpec, timeout: float = CASSANDRA_NODE_TIMEOUT) -> None:
        log.info("%s: waiting for CQL on %s", node.name, node.address)
        t0 = time.monotonic()
        try:
            ssl_context = self._cql_ssl()
            ok = probes.poll_until(
                lambda: probes.cql_answers(node.host, node.port, ssl_context=ssl_context),
                timeout=timeout,
                interval=0.5,
                abort=lambda: self._exit_reason(node) if self._exited(node) else None,
            )
        except RuntimeError as e:
            raise self._fail(node.name, str(e)) from None
        if not ok:
            raise self._fail(node.name, f"no CQL answer on {node.address} after {timeout:.0f}s")
        log.info("%s: answers CQL (%.1fs)", node.name, time.monotonic() - t0)

    def _wait_ring(self, cluster: list[NodeSpec], timeout: float = CASSANDRA_RING_TIMEOUT) -> None:
        hosts = [n.host for n in cluster]
        if len(hosts) < 2:
            return
        log.info("cassandra: waiting until %s see each other", ", ".join(hosts))
        last = [""]
        ssl_context = self._cql_ssl()
        logins = self._cassandra_logins()

        def probe() -> bool:
            for auth in logins:  # the next login only if this one was refused
                last[0] = probes.cassandra_ring_healthy(
                    hosts, ssl_context=ssl_context, auth_provider=auth
                )
                if "AuthenticationFailed" not in last[0]:
                    break
            return not last[0]

        def abort() -> str | None:
            dead = self._died(cluster)
            return f"{dead} exited" if dead else None

        try:
            ok = probes.poll_until(probe, timeout=timeout, interval=1.0, abort=abort)
        except RuntimeError as e:
            raise self._fail(str(e).split()[0], "exited while the ring formed") from None
        if not ok:
            bad = next((n for n in cluster if n.host in last[0]), cluster[0])
            raise self._fail(bad.name, f"ring not healthy after {timeout:.0f}s: {last[0]}")
        log.info("cassandra: ring of %d nodes ready", len(cluster))

    # ---- one node ------------------------------------------------------------------

    def _known(self, name: str) -> NodeSpec:
        node = node_by_name(name)
        if node not in self.known_nodes(node.kind) or not self.node_count(node.kind):
            raise InfraError(
                f"{name} is not part of the cluster in {self.run_dir}; "
                f"run `python -m infra up` first"
            )
        return node

    @_locked
    def stop_node(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (then SIGKILL after timeout) the node's recorded pid."""
        node = self._known(name)
        pid = self.pid(node)
        if pid is None:
            log.info("%s: not running", name)
            return
        procs.terminate([pid], self.dirs(node).marker, timeout)
        log.info("%s: stopped (pid %d)", name, pid)

    @_locked
    def kill_node(self, name: str) -> None:
        """SIGKILL the node's recorded pid and wait until it is gone."""
        node = self._known(name)
        pid = self.pid(node)
        if pid is None:
            log.info("%s: not running", name)
            return
        marker = self.dirs(node).marker
        procs.signal_pid(pid, signal.SIGKILL, marker)
        procs.wait_gone([pid], marker, 10.0)
        log.info("%s: killed (pid %d)", name, pid)

    @_locked
    def start_node(self, name: str, wait: bool = True) -> None:
        """Start one node of an existing cluster (same data dirs) and wait until it serves:
        Kafka: registered as a broker; Cassandra: answers CQL and the ring sees it."""
        node = self._known(name)
        if self.pid(node) is not None:
            log.info("%s: already running", name)
        else:
            # Restarting a node we may have just killed: give its sockets time to close.
            self._preflight(node, wait_s=30.0)
            lib = self._lib(node.kind)
            if node.kind == KAFKA:
                cluster = nodes(KAFKA, self.node_count(KAFKA))
                self._write_kafka_conf(node, cluster)
                self._spawn_kafka_node(node, lib)
            else:
                self._check_cassandra_mode()
                self._spawn_cassandra_node(node, lib)
        if not wait:
            return
        if node.kind == KAFKA:
            live = [n for n in nodes(KAFKA, self.node_count(KAFKA)) if self.pid(n)]
            self._wait_kafka(live, [node])
        else:
            self._wait_cql(node)
            live = [n for n in nodes(CASSANDRA, self.node_count(CASSANDRA)) if self.pid(n)]
            self._wait_ring(live)

    # ---- bring down ----------------------------------------------------------------

    @_locked
    def down(
        self, wipe: bool = False, timeout: float = STOP_TIMEOUT, kind: str | None = None
    ) -> None:
        """SIGTERM every recorded node pid (SIGKILL after timeout); wipe deletes the run
        dir. With kind, only that cluster's nodes stop (and wipe is refused)."""
        if kind is not None and wipe:
            raise InfraError("wipe applies to the whole run dir, not to one cluster")
        targets = [(n, self.pid(n)) for n in self.known_nodes(kind)]
        running = [(n, p) for n, p in targets if p is not None]
        if running:
            log.info("stopping %s", ", ".join(n.name for n, _ in running))
        # Cassandra and Kafka nodes all get SIGTERM at once; each group waits in parallel.
        with ThreadPoolExecutor(max(1, len(running))) as pool:
            list(
                pool.map(
                    lambda np: procs.terminate([np[1]], self.dirs(np[0]).marker, timeout),
                    running,
                )
            )
        for n, _ in running:
            self.dirs(n).pid_file.unlink(missing_ok=True)
        if wipe and self.run_dir.exists():
            log.info("wiping %s", self.run_dir)
            for child in self.run_dir.iterdir():
                if child.name == self.lock.path.name:
                    continue  # others may be waiting on it
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
