"""What docker-compose.yml's nodes and services read from the `security` volume.

`python -m infra security-init --dir /security` (the compose `security-init` service, as
root) makes, once, the same files `python -m infra up` makes under a run dir, and hands
each container its own private copy:

    <dir>/certs/, <dir>/secrets/       the master copy, native layout (root, 0700)
    <dir>/app/certs/ca.crt             the pipeline's services (uid 10001): the CA they
    <dir>/app/secrets/{kafka,cassandra}/<principal>   trust and every principal's password
    <dir>/kafka-N/                      apache/kafka (appuser, uid 1000): PEM keystore, CA,
                                        server.properties, client.properties (healthcheck),
                                        SCRAM bootstrap passwords, cluster.id, start.sh
    <dir>/cassandra-N/                  cassandra (uid 999): PEM keystore, CA,
                                        cassandra.yaml, probe.py (healthcheck)

Node configs are rendered by infra.local.kafka_node / cassandra_node, the code of the
native nodes, for compose's host names, fixed addresses and paths (`compose_nodes`), so
the two setups cannot drift. Kafka gets one addition: an EXTERNAL listener, like BROKER
in every respect, advertised as 127.0.0.1:1909N for clients on the Docker host.

Guarantees: files are 0600 in 0700 directories owned by the one uid that reads them
(when run as root); running it again changes nothing (secrets and certificates are
reused while valid, files are rewritten only when their content differs); the mode
(`secure` or `plaintext`) comes from PIPELINE_SECURITY__MODE, so the plaintext compose
variant uses the very same scripts with plaintext configs.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local import cassandra_node, kafka_node
from infra.local.topology import (
    CASSANDRA,
    CASSANDRA_JMX_PORT_BASE,
    CASSANDRA_NATIVE_PORT,
    CASSANDRA_STORAGE_PORT,
    KAFKA,
    MAX_NODES,
    NodeSpec,
)
from infra.private_files import write_private
from infra.security import (
    CASSANDRA_ROLES,
    KAFKA_ADMIN,
    KAFKA_BROKER,
    KAFKA_PRINCIPALS,
    ensure_secret,
    mask,
)

log = logging.getLogger(__name__)

# Container users of the images (apache/kafka: appuser; cassandra: the image's user;
# the project's Dockerfile: app).
KAFKA_UID = 1000
CASSANDRA_UID = 999
APP_UID = 10001

# Fixed addresses on the compose network (docker-compose.yml `networks`): Cassandra
# listens on, gossips with and is verified by its address (require_endpoint_verification),
# so the certificates must name it, which a DHCP-style Docker address would not allow.
SUBNET = "172.30.0.0/24"
CASSANDRA_IP = "172.30.0.1{}"  # cassandra-N -> 172.30.0.1N
KAFKA_IP = "172.30.0.2{}"  # kafka-N -> 172.30.0.2N
KAFKA_INTERNAL_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
KAFKA_EXTERNAL_PORT_BASE = 19091  # kafka-1 -> 19092 on the host, as the native brokers
EXTERNAL_LISTENER = "EXTERNAL"
EXTERNAL_HOST = "127.0.0.1"

MOUNT = Path("/security")  # where every container mounts the volume
KAFKA_DATA = Path("/var/lib/kafka/data")
CASSANDRA_STORAGE = Path("/var/lib/cassandra")


def kafka_nodes() -> list[NodeSpec]:
    return [
        NodeSpec(
            name=f"kafka-{i}",
            kind=KAFKA,
            index=i,
            host=f"kafka-{i}",
            port=KAFKA_INTERNAL_PORT,
            ports={"broker": KAFKA_INTERNAL_PORT, "controller": KAFKA_CONTROLLER_PORT},
        )
        for i in range(1, MAX_NODES + 1)
    ]


def cassandra_nodes() -> list[NodeSpec]:
    return [
        NodeSpec(
            name=f"cassandra-{i}",
            kind=CASSANDRA,
            index=i,
            host=CASSANDRA_IP.format(i),
            port=CASSANDRA_NATIVE_PORT,
            ports={
                "native": CASSANDRA_NATIVE_PORT,
                "storage": CASSANDRA_STORAGE_PORT,
                "jmx": CASSANDRA_JMX_PORT_BASE + 100,  # one node per container: 7199
            },
        )
        for i in range(1, MAX_NODES + 1)
    ]


def node_hosts(node: NodeSpec) -> list[str]:
    """SANs of a compose node's certificate: its container name, its fixed address, and
    localhost/127.0.0.1 (host clients through the published ports, healthchecks)."""
    ip = (CASSANDRA_IP if node.kind == CASSANDRA else KAFKA_IP).format(node.index)
    return [node.name, ip, "localhost", "127.0.0.1"]


def external_port(node: NodeSpec) -> int:
    return KAFKA_EXTERNAL_PORT_BASE + node.index


# ---- rendering (pure) ----------------------------------------------------------------


def _parse_props(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def add_external_listener(props: str, node: NodeSpec, secure: bool) -> str:
    """`props` (kafka_node's rendering) plus an EXTERNAL listener for the Docker host:
    bound in the container, advertised as 127.0.0.1:<published port>, with the BROKER
    listener's protocol and SASL settings."""
    items = _parse_props(props)
    port = external_port(node)
    internal = kafka_node.SECURE_LISTENER if secure else "PLAINTEXT"
    protocol = "SASL_SSL" if secure else "PLAINTEXT"
    ext = EXTERNAL_LISTENER
    items["listeners"] += f",{ext}://{node.host}:{port}"
    items["advertised.listeners"] += f",{ext}://{EXTERNAL_HOST}:{port}"
    items["listener.security.protocol.map"] += f",{ext}:{protocol}"
    prefix = f"listener.name.{internal.lower()}."
    for key in [k for k in items if k.startswith(prefix)]:
        items[f"listener.name.{ext.lower()}." + key.removeprefix(prefix)] = items[key]
    header = "# generated by infra.compose_security (infra.local.kafka_node + EXTERNAL)"
    return header + "\n" + "".join(f"{k}={v}\n" for k, v in items.items())


@dataclass(frozen=True)
class Secrets:
    kafka: dict[str, str]
    cassandra: dict[str, str]


def kafka_security(node: NodeSpec, broker_password: str) -> kafka_node.KafkaSecurity:
    d = MOUNT / node.name
    return kafka_node.KafkaSecurity(
        keystore=d / f"{node.name}.pem",
        truststore=d / "ca.crt",
        broker_user=KAFKA_BROKER,
        broker_password=broker_password,
        super_users=(KAFKA_BROKER, KAFKA_ADMIN),
    )


def render_kafka_properties(node: NodeSpec, secure: bool, broker_password: str = "") -> str:
    security = kafka_security(node, broker_password) if secure else None
    props = kafka_node.render_server_properties(
        node, kafka_nodes(), KAFKA_DATA, kafka_node.KafkaTuning(), security
    )
    return add_external_listener(props, node, secure)


def render_kafka_client_properties(node: NodeSpec, secure: bool, password: str = "") -> str:
    """The healthcheck's login (the brokers' own SCRAM user): Java client properties."""
    if not secure:
        return "security.protocol=PLAINTEXT\n"
    d = MOUNT / node.name
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{KAFKA_BROKER}" password="{password}";'
    )
    return (
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={kafka_node.SCRAM_MECHANISM}\n"
        f"sasl.jaas.config={jaas}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={d / 'ca.crt'}\n"
    )


def render_kafka_start(node: NodeSpec, secure: bool) -> str:
    """The node's command: format storage once (with the SCRAM users of
    kafka_node.scram_arguments in secure mode), then run the server on the rendered
    properties. The official image's own entrypoint would format without SCRAM."""
    d = MOUNT / node.name
    scram = ""
    if secure:
        users = " ".join(
            f'--add-scram "{kafka_node.SCRAM_MECHANISM}=[name={u},password=$(cat {d}/scram/{u})]"'
            for u in (KAFKA_BROKER, KAFKA_ADMIN)
        )
        scram = " " + users
    return f"""#!/bin/sh
# generated by infra.compose_security: format once, then run {node.name}
set -eu
if [ ! -f {KAFKA_DATA}/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format -t "$(cat {d}/cluster.id)" -c {d}/server.properties{scram}
fi
exec /opt/kafka/bin/kafka-server-start.sh {d}/server.properties
"""


def cassandra_security(node: NodeSpec) -> cassandra_node.CassandraSecurity:
    d = MOUNT / node.name
    return cassandra_node.CassandraSecurity(
        keystore=d / f"{node.name}.pem", truststore=d / "ca.crt"
    )


def render_cassandra_yaml(node: NodeSpec, secure: bool) -> str:
    return cassandra_node.render_yaml(
        node,
        cassandra_nodes(),
        CASSANDRA_STORAGE,
        cassandra_node.CassandraTuning(),
        cassandra_security(node) if secure else None,
    )


def cassandra_system_properties(secure: bool = True) -> list[str]:
    """The -Dcassandra.* start-up flags the native nodes get that change behaviour (not
    paths or ports): compose passes them as JVM_EXTRA_OPTS (a unit test compares)."""
    node = cassandra_nodes()[0]
    opts = cassandra_node.jvm_options(
        node,
        lib=Path("/nonexistent"),
        conf_dir=Path("/conf"),
        storage=CASSANDRA_STORAGE,
        logs_dir=Path("/logs"),
        tmp_dir=Path("/tmp"),
        tuning=cassandra_node.CassandraTuning(),
        secure=secure,
        cluster_size=MAX_NODES,
    )
    keep = (
        "-Dcassandra.skip_wait_for_gossip_to_settle=",
        "-Dcassandra.ring_delay_ms=",
        "-Dcassandra.block_for_peers_timeout_in_secs=",
        "-Dcassandra.system_auth.default_rf=",
    )
    return [o for o in opts if o.startswith(keep)]


# The CQL OPTIONS probe of infra.local.probes.cql_answers, standalone for the cassandra
# image's python3: answers SUPPORTED over TLS with no login, so it works before roles exist.
PROBE = '''"""generated by infra.compose_security: exit 0 if CQL answers OPTIONS on {host}:9042."""
import socket, ssl, struct, sys
TLS = {tls}
try:
    with socket.create_connection(("{host}", 9042), timeout=5) as raw:
        raw.settimeout(5)
        s = raw
        if TLS:
            ctx = ssl.create_default_context(cafile="{ca}")
            s = ctx.wrap_socket(raw, server_hostname="{host}")
        s.sendall(struct.pack(">BBhBi", 0x04, 0, 1, 0x05, 0))
        header = b""
        while len(header) < 9:
            chunk = s.recv(9 - len(header))
            if not chunk:
                sys.exit("connection closed before an answer")
            header += chunk
except OSError as e:
    sys.exit(f"no CQL answer: {{e}}")
version, _, _, opcode, _ = struct.unpack(">BBhBi", header)
sys.exit(0 if version & 0x80 and opcode == 0x06 else f"unexpected answer opcode {{opcode}}")
'''


def render_cassandra_probe(node: NodeSpec, secure: bool) -> str:
    return PROBE.format(host=node.name, tls=secure, ca=MOUNT / node.name / "ca.crt")


# ---- writing -------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes, uid: int | None) -> bool:
    """Write `path` 0600 (atomically) unless it already holds `data`; own it by `uid`."""
    changed = not path.is_file() or path.read_bytes() != data
    if changed:
        write_private(path, data)
    _own(path, 0o600, uid)
    return changed


def _private_dir(path: Path, uid: int | None) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _own(path, 0o700, uid)


def _own(path: Path, mode: int, uid: int | None) -> None:
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
    if uid is not None and (st.st_uid, st.st_gid) != (uid, uid):
        os.chown(path, uid, uid)


def _owner(uid: int, chown: bool) -> int | None:
    return uid if chown else None


def ensure_master(directory: Path) -> Secrets:
    """The CA, node certificates and every principal's secret under `directory`
    (native layout: certs/, secrets/), made once."""
    from infra.certs import ensure_node_cert

    certs, secrets = directory / "certs", directory / "secrets"
    for node in kafka_nodes() + cassandra_nodes():
        ensure_node_cert(certs, node.name, node_hosts(node))
    return Secrets(
        kafka={p: ensure_secret(secrets, "kafka", p) for p in KAFKA_PRINCIPALS},
        cassandra={r: ensure_secret(secrets, "cassandra", r) for r in CASSANDRA_ROLES},
    )


def security_init(directory: Path, secure: bool, chown: bool | None = None) -> list[Path]:
    """Fill the volume at `directory`; returns the files written now (empty: no change).
    `chown` (default: when running as root) gives each container's files to its uid."""
    if chown is None:
        chown = os.geteuid() == 0
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)  # each container traverses it to its own 0700 directory
    written: list[Path] = []

    def put(path: Path, text: str | bytes, uid: int) -> None:
        data = text.encode() if isinstance(text, str) else text
        if _write_if_changed(path, data, _owner(uid, chown)):
            written.append(path)

    master_certs = directory / "certs"
    state_dir = directory / "state"
    _private_dir(state_dir, _owner(0, chown))
    if secure:
        _private_dir(directory / "secrets", _owner(0, chown))
        _private_dir(master_certs, _owner(0, chown))
        secrets = ensure_master(directory)
    else:
        secrets = Secrets(kafka={}, cassandra={})
    # Kafka's cluster id, made once: formatting must use the same one on every node.
    cid_file = state_dir / "cluster.id"
    if not cid_file.is_file():
        put(cid_file, kafka_node.new_cluster_id() + "\n", 0)
    cluster_id = cid_file.read_text().strip()

    for node in kafka_nodes():
        d = directory / node.name
        own = KAFKA_UID
        _private_dir(d, _owner(own, chown))
        if secure:
            _private_dir(d / "scram", _owner(own, chown))
            for f in (f"{node.name}.pem", "ca.crt"):
                put(d / f, (master_certs / f).read_bytes(), own)
            for u in (KAFKA_BROKER, KAFKA_ADMIN):
                put(d / "scram" / u, secrets.kafka[u] + "\n", own)
        broker_pw = secrets.kafka.get(KAFKA_BROKER, "")
        put(d / "server.properties", render_kafka_properties(node, secure, broker_pw), own)
        put(d / "client.properties", render_kafka_client_properties(node, secure, broker_pw), own)
        put(d / "cluster.id", cluster_id + "\n", own)
        put(d / "start.sh", render_kafka_start(node, secure), own)

    for node in cassandra_nodes():
        d = directory / node.name
        own = CASSANDRA_UID
        _private_dir(d, _owner(own, chown))
        if secure:
            for f in (f"{node.name}.pem", "ca.crt"):
                put(d / f, (master_certs / f).read_bytes(), own)
        put(d / "cassandra.yaml", render_cassandra_yaml(node, secure), own)
        put(d / "probe.py", render_cassandra_probe(node, secure), own)

    app = directory / "app"
    _private_dir(app, _owner(APP_UID, chown))
    if secure:
        for sub in ("certs", "secrets", "secrets/kafka", "secrets/cassandra"):
            _private_dir(app / sub, _owner(APP_UID, chown))
        put(app / "certs" / "ca.crt", (master_certs / "ca.crt").read_bytes(), APP_UID)
        for kind, values in (("kafka", secrets.kafka), ("cassandra", secrets.cassandra)):
            for name, value in values.items():
                if name != KAFKA_BROKER:  # the brokers' own login stays with the brokers
                    put(app / "secrets" / kind / name, value + "\n", APP_UID)
    for path in written:
        log.info("security-init: wrote %s", path.relative_to(directory))
    return written


def app_environment(mount: Path = MOUNT) -> dict[str, str]:
    """PIPELINE_SECURITY__* of every pipeline service in compose (docker-compose.yml
    repeats it; a unit test compares)."""
    return {
        "PIPELINE_SECURITY__MODE": "secure",
        "PIPELINE_SECURITY__CERTS_DIR": str(mount / "app" / "certs"),
        "PIPELINE_SECURITY__CA_FILE": str(mount / "app" / "certs" / "ca.crt"),
        "PIPELINE_SECURITY__SECRETS_DIR": str(mount / "app" / "secrets"),
    }


def bootstrap_roles(settings: object) -> str:
    """The project's Cassandra roles on the cluster `settings` (PipelineSettings) point
    at, as `infra up` does natively (infra.cassandra_roles.bootstrap); a no-op in
    plaintext mode. Returns a one-line summary."""
    from infra import cassandra_roles as roles

    security = settings.security  # type: ignore[attr-defined]
    if not security.secure:
        return "plaintext mode: no roles"
    c = settings.cassandra  # type: ignore[attr-defined]
    report = roles.bootstrap(
        list(c.contact_points),
        c.port,
        roles.client_ssl_context(security.resolved_ca_file()),
        roles.role_passwords(security.resolved_secrets_dir()),
    )
    return (
        f"roles ready in {report.seconds:.1f}s (admin "
        f"{'created' if report.admin_created else 'present'}, default superuser "
        f"{'disabled now' if report.default_superuser_disabled else 'already disabled'}, "
        f"roles {', '.join(report.roles)})"
    )


# ---- command line (`python -m infra security-init | bootstrap-roles`) ----------------

COMMANDS = ("security-init", "bootstrap-roles")


def add_parsers(sub: Any) -> None:
    si = sub.add_parser(
        "security-init", help="docker compose: fill the security volume (CA, certs, secrets)"
    )
    si.add_argument("--dir", type=Path, default=MOUNT, help=f"the volume (default {MOUNT})")
    sub.add_parser(
        "bootstrap-roles",
        help="make the Cassandra roles on the cluster settings point at (secure mode)",
    )


def run(args: Any) -> int:
    from infra.cassandra_roles import RolesError
    from infra.settings import PipelineSettings

    settings = PipelineSettings()
    try:
        if args.command == "security-init":
            mode = settings.security.mode
            written = security_init(args.dir, secure=settings.security.secure)
            print(f"security-init ({mode}): {len(written)} files written under {args.dir}")
        elif args.command == "bootstrap-roles":
            print(f"cassandra: {bootstrap_roles(settings)}")
    except (RolesError, OSError, RuntimeError) as e:  # e.g. no volume, an unreadable CA
        print(f"error: {args.command}: {mask(str(e))}", file=sys.stderr)
        return 1
    return 0
