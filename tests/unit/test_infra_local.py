"""Pure logic of infra.local and infra.provision: no server, no JVM, no network."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

import pytest
import yaml

from infra.cli import build_parser
from infra.local import cassandra_node, kafka_node, maven, ports, procs
from infra.local.cluster import LocalCluster
from infra.local.errors import InfraError
from infra.local.jvm import find_java_home, parse_major
from infra.local.layout import RunDirLock, resolve_run_dir
from infra.local.topology import (
    cassandra_contact_points,
    kafka_bootstrap,
    node_by_name,
    nodes,
    parse_name,
)
from infra.provision import ProvisionReport, replication_matches
from infra.settings import DEFAULT_BOOTSTRAP, DEFAULT_CONTACT_POINTS


def _props(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


# ---- topology ---------------------------------------------------------------------


def test_topology_matches_the_settings_defaults():
    assert kafka_bootstrap(3) == DEFAULT_BOOTSTRAP
    assert cassandra_contact_points(3) == DEFAULT_CONTACT_POINTS


def test_node_names_and_ports():
    k2 = node_by_name("kafka-2")
    assert (k2.kind, k2.address, k2.ports["controller"]) == ("kafka", "127.0.0.1:19093", 19193)
    c3 = node_by_name("cassandra-3")
    assert c3.address == "127.0.0.3:9042"
    assert c3.ports == {"native": 9042, "storage": 7000, "jmx": 7399}
    assert [n.name for n in nodes("kafka", 2)] == ["kafka-1", "kafka-2"]


@pytest.mark.parametrize("bad", ["kafka-4", "kafka-0", "zk-1", "kafka", "cassandra-x", ""])
def test_unknown_node_names_are_refused(bad):
    with pytest.raises(ValueError, match="unknown node"):
        parse_name(bad)


# ---- Kafka config ---------------------------------------------------------------------


def test_cluster_id_is_16_bytes_base64url_without_padding():
    ids = {kafka_node.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and "=" not in cid and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16
        assert kafka_node.valid_cluster_id(cid)
    assert not kafka_node.valid_cluster_id("-" + "A" * 21)
    assert not kafka_node.valid_cluster_id("short")


def test_server_properties_for_a_three_node_kraft_quorum(tmp_path):
    cluster = nodes("kafka", 3)
    props = _props(
        kafka_node.render_server_properties(cluster[1], cluster, tmp_path, kafka_node.KafkaTuning())
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert "0.0.0.0" not in props["advertised.listeners"]
    assert props["log.dirs"] == str(tmp_path)
    for key, want in {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "unclean.leader.election.enable": "false",
    }.items():
        assert props[key] == want, key
    assert int(props["num.network.threads"]) <= 3 and int(props["num.io.threads"]) <= 3


def test_single_node_kafka_lowers_replication_to_fit(tmp_path):
    one = nodes("kafka", 1)
    props = _props(
        kafka_node.render_server_properties(one[0], one, tmp_path, kafka_node.KafkaTuning())
    )
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_kafka_command_line(tmp_path):
    cmd = kafka_node.server_command(
        Path("/jdk/bin/java"),
        tmp_path / "lib",
        tmp_path / "s.props",
        tmp_path / "log4j2.properties",
        tmp_path,
        tmp_path,
        512,
    )
    assert cmd[0] == "/jdk/bin/java" and cmd[-2:] == ["kafka.Kafka", str(tmp_path / "s.props")]
    assert {"-Xmx512m", "-XX:+UseG1GC", "-XX:ParallelGCThreads=1"} <= set(cmd)
    assert f"-Dlog4j2.configurationFile={tmp_path / 'log4j2.properties'}" in cmd


def test_log4j2_config_is_properties_with_a_rolling_file():
    props = _props(kafka_node.render_log4j2().replace(" = ", "="))
    assert props["appender.file.type"] == "RollingFile"
    assert props["appender.file.fileName"] == "${sys:kafka.logs.dir}/server.log"
    assert props["rootLogger.appenderRef.file.ref"] == "FILE"


def test_log_tail_shows_the_server_log_then_jvm_output_since_the_last_start(tmp_path):
    c = LocalCluster(tmp_path)
    d = c.dirs(node_by_name("cassandra-1"))
    d.create()
    d.server_log.write_text("INFO a\nERROR b\n")
    d.log_file.write_text(
        "==== t0 starting\nold crash\n==== t1 starting\nWARNING: x\n"
        "Error: Could not find or load main class\n"
    )
    assert c.log_tail("cassandra-1") == (
        "INFO a\nERROR b\n--- stdout/stderr:\nError: Could not find or load main class"
    )


# ---- Cassandra config -----------------------------------------------------------------


def test_cassandra_yaml_is_valid_yaml_with_per_node_addresses(tmp_path):
    node = node_by_name("cassandra-2")
    conf = yaml.safe_load(
        cassandra_node.render_yaml(
            node, nodes("cassandra", 3), tmp_path, cassandra_node.CassandraTuning()
        )
    )
    assert conf["listen_address"] == conf["rpc_address"] == "127.0.0.2"
    assert conf["native_transport_port"] == 9042 and conf["storage_port"] == 7000
    assert conf["seed_provider"][0]["parameters"][0]["seeds"] == (
        "127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000"
    )
    assert conf["endpoint_snitch"] == "SimpleSnitch"
    assert conf["partitioner"].endswith("Murmur3Partitioner")
    assert conf["storage_compatibility_mode"] == "NONE"
    assert conf["commitlog_sync"] == "periodic"
    assert conf["data_file_directories"] == [str(tmp_path / "data")]
    assert conf["concurrent_compactors"] == 1
    assert conf["concurrent_reads"] <= 8 and conf["concurrent_writes"] <= 8


def test_cassandra_jvm_options_for_java17(tmp_path):
    (tmp_path / "jamm-0.4.0.jar").touch()
    node = node_by_name("cassandra-3")
    opts = cassandra_node.jvm_options(
        node,
        lib=tmp_path,
        conf_dir=tmp_path / "conf",
        storage=tmp_path / "d",
        logs_dir=tmp_path / "l",
        tmp_dir=tmp_path / "t",
        tuning=cassandra_node.CassandraTuning(),
    )
    assert f"-javaagent:{tmp_path / 'jamm-0.4.0.jar'}" in opts
    assert "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED" in opts
    assert "--add-opens=java.base/java.nio=ALL-UNNAMED" in opts
    assert f"-Dcassandra.config=file://{tmp_path / 'conf' / 'cassandra.yaml'}" in opts
    assert f"-Djava.io.tmpdir={tmp_path / 't'}" in opts
    assert "-Dcassandra.jmx.local.port=7399" in opts
    assert "-Dcassandra.skip_wait_for_gossip_to_settle=0" in opts
    cmd = cassandra_node.server_command(Path("/j/bin/java"), tmp_path, tmp_path / "conf", opts)
    cp = cmd[cmd.index("-cp") + 1]
    assert cp.startswith(str(tmp_path / "conf") + ":"), "conf dir goes first on the classpath"
    assert cmd[-1] == "org.apache.cassandra.service.CassandraDaemon"


def test_logback_config_is_xml():
    import xml.etree.ElementTree as ET

    root = ET.fromstring(cassandra_node.render_logback())
    assert root.tag == "configuration"


# ---- Maven ------------------------------------------------------------------------------


def test_pom_lists_the_server_and_its_extras():
    import xml.etree.ElementTree as ET

    pom = ET.fromstring(maven.render_pom(maven.KAFKA_ARTIFACTS))
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    deps = [
        (d.find("m:groupId", ns).text, d.find("m:artifactId", ns).text)
        for d in pom.iterfind(".//m:dependency", ns)
    ]
    assert ("org.apache.kafka", "kafka_2.13") in deps
    assert ("org.apache.logging.log4j", "log4j-slf4j-impl") in deps


def test_versions_are_kafka_4_and_cassandra_5_0():
    assert maven.KAFKA_ARTIFACTS.main.version.startswith("4.")
    assert maven.CASSANDRA_ARTIFACTS.main.version.startswith("5.0.")
    assert maven.lib_dir(maven.KAFKA_ARTIFACTS, Path("/c")) == Path(
        f"/c/kafka-{maven.KAFKA_ARTIFACTS.main.version}/lib"
    )


def test_exactly_one_slf4j_binding_is_required(tmp_path):
    arts = maven.CASSANDRA_ARTIFACTS
    main = f"{arts.main.artifact}-{arts.main.version}.jar"
    for name in (main, "slf4j-api-1.7.36.jar", "logback-classic-1.2.12.jar"):
        (tmp_path / name).touch()
    maven.check_classpath(arts, tmp_path)
    (tmp_path / "log4j-slf4j-impl-2.24.3.jar").touch()
    with pytest.raises(InfraError, match="exactly one SLF4J binding"):
        maven.check_classpath(arts, tmp_path)


def test_cached_artifacts_need_no_maven(tmp_path, monkeypatch):
    lib = maven.lib_dir(maven.KAFKA_ARTIFACTS, tmp_path)
    lib.mkdir(parents=True)
    (lib.parent / maven.MARKER).touch()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert maven.ensure(maven.KAFKA_ARTIFACTS, Path("/jdk"), tmp_path) == lib


def test_missing_maven_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InfraError, match=r"Maven \(mvn\) not found"):
        maven.ensure(maven.KAFKA_ARTIFACTS, Path("/jdk"), tmp_path)


# ---- Java ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_392"', 8),
        ("garbage", None),
    ],
)
def test_java_version_parsing(text, major):
    assert parse_major(text) == major


def test_wrong_java_is_refused(tmp_path):
    fake = tmp_path / "jdk" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text("#!/bin/sh\necho 'openjdk version \"25\" 2025-09-16' >&2\n")
    (fake / "java").chmod(0o755)
    with pytest.raises(InfraError, match=r"Java 17 not found.*Java 25"):
        find_java_home({"PIPELINE_JAVA_HOME": str(tmp_path / "jdk")})
    with pytest.raises(InfraError, match="no bin/java"):
        find_java_home({"PIPELINE_JAVA_HOME": str(tmp_path / "none")})


# ---- ports, processes, run dir -----------------------------------------------------------


def test_port_checks_name_the_node_and_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not ports.port_free("127.0.0.1", port)
        assert ports.port_open("127.0.0.1", port)
        node = node_by_name("kafka-1")
        busy = type(node)(node.name, node.kind, node.index, node.host, port, {"broker": port})
        with pytest.raises(InfraError, match=rf"127\.0\.0\.1:{port} \(broker\) needed by kafka-1"):
            ports.check_ports_free(busy)
    assert ports.port_free("127.0.0.1", port)
    assert not ports.port_open("127.0.0.1", port)


def test_only_our_java_processes_count_as_ours(tmp_path):
    assert not procs.is_ours(os.getpid(), "")  # a python process, not java
    assert not procs.is_ours(None, "x")
    assert not procs.is_ours(2**22 + 12345, "x")


def test_a_spawned_child_is_judged_by_its_exit_status(tmp_path):
    pid = procs.spawn(
        ["sleep", "30"], log_path=tmp_path / "log", cwd=tmp_path, env=dict(os.environ)
    )
    try:
        assert procs.child_running(pid) is True
        assert not procs.is_ours(pid, str(tmp_path))  # not java: the /proc check says no
        # Until the child has exec'd, /proc shows the forking Python's command line.
        deadline = time.monotonic() + 5.0
        while "sleep" not in procs.describe(pid, "nowhere") and time.monotonic() < deadline:
            time.sleep(0.02)
        text = procs.describe(pid, "nowhere")
        assert f"pid {pid}" in text and "sleep" in text and "marker missing" in text
    finally:
        os.kill(pid, 9)
    deadline = time.monotonic() + 5.0
    while procs.child_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.child_running(pid) is False
    procs.wait_gone([pid], "", 5.0)  # reaps it: then it is no longer tracked
    assert procs.child_running(pid) is None
    assert procs.child_running(os.getpid()) is None  # not a child of this process
    assert procs.describe(None, "x") == "no pid recorded"


def test_tail_returns_the_last_lines(tmp_path):
    f = tmp_path / "log"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail(f, 3) == "line 97\nline 98\nline 99"
    assert procs.tail(tmp_path / "missing", 3) == ""


def test_run_dir_resolution(tmp_path):
    assert resolve_run_dir(str(tmp_path)) == tmp_path
    assert resolve_run_dir(None, {"PIPELINE_RUN_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    assert resolve_run_dir(None, {}) == Path(".run").resolve()


def test_run_dir_lock_is_reentrant_and_exclusive(tmp_path):
    import fcntl

    lock = RunDirLock(tmp_path, timeout=0.3)
    with lock, lock:
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        with pytest.raises(InfraError, match="still locked"):
            RunDirLock(tmp_path, timeout=0.3).__enter__()


def test_status_of_an_empty_run_dir_is_all_down(tmp_path):
    status = LocalCluster(tmp_path).status()
    json.dumps(status)
    assert [n["name"] for n in status["nodes"]] == [
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "cassandra-1",
        "cassandra-2",
        "cassandra-3",
    ]
    assert {(n["state"], n["pid"]) for n in status["nodes"]} == {("down", None)}
    assert status["kafka"] == {"brokers": 0} and status["cassandra"] == {"up_nodes": 0}


def test_node_control_needs_a_cluster(tmp_path):
    with pytest.raises(InfraError, match="not part of the cluster"):
        LocalCluster(tmp_path).kill_node("kafka-1")


# ---- CLI and provisioning --------------------------------------------------------------


def test_cli_commands_parse():
    p = build_parser()
    assert p.parse_args(["up"]).kafka_nodes == 3
    a = p.parse_args(["up", "--kafka-nodes", "1", "--only", "kafka"])
    assert (a.kafka_nodes, a.only) == (1, "kafka")
    assert p.parse_args(["down", "--wipe"]).wipe
    assert p.parse_args(["status", "--json"]).json
    assert p.parse_args(["logs", "kafka-1", "-n", "5"]).lines == 5
    for cmd in ("stop-node", "kill-node", "start-node"):
        assert p.parse_args([cmd, "cassandra-2"]).name == "cassandra-2"
    with pytest.raises(SystemExit):
        p.parse_args(["up", "--kafka-nodes", "4"])


def test_cli_reports_an_unknown_node_in_one_line(tmp_path, capsys):
    from infra.cli import main

    assert main(["--run-dir", str(tmp_path), "logs", "kafka-9"]) != 0
    assert capsys.readouterr().err.strip().startswith("error: unknown node 'kafka-9'")


def test_keyspace_replication_check():
    nts = "org.apache.cassandra.locator.NetworkTopologyStrategy"
    assert replication_matches({"class": nts, "datacenter1": "3"}, "datacenter1", 3)
    assert not replication_matches({"class": nts, "datacenter1": "1"}, "datacenter1", 3)
    assert not replication_matches(
        {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"},
        "datacenter1",
        3,
    )


def test_provision_report_summary():
    r = ProvisionReport(
        created_topics=["a"],
        existing_topics=["b", "c"],
        keyspace="vision",
        keyspace_created=True,
        tables=3,
    )
    assert r.summary() == (
        "topics: 1 created, 2 present; keyspace vision: created, 3 table statements applied"
    )


def test_a_node_that_dies_during_start_is_named_with_its_log_tail(tmp_path, monkeypatch):
    from infra.local import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod.probes, "kafka_broker_ids", lambda *a, **k: set())
    monkeypatch.setattr(cluster_mod.ports, "port_open", lambda *a, **k: False)
    c = LocalCluster(tmp_path)
    node = node_by_name("kafka-2")
    c.dirs(node).create()
    c.dirs(node).log_file.write_text("starting\nERROR Exiting Kafka due to fatal exception\n")
    with pytest.raises(InfraError) as e:
        c._wait_kafka([node], [node], timeout=5)
    first, *rest = str(e.value).splitlines()
    assert first == "kafka-2: exited during start"
    assert "ERROR Exiting Kafka due to fatal exception" in rest[-1]


def test_unresolvable_artifacts_are_one_clear_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(
        "#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not resolve dependencies'\nexit 1\n"
    )
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(InfraError) as e:
        maven.ensure(maven.CASSANDRA_ARTIFACTS, Path("/jdk"), tmp_path / "cache")
    first, *rest = str(e.value).splitlines()
    assert first == (
        "cassandra: cannot resolve org.apache.cassandra:cassandra-all:"
        f"{maven.CASSANDRA_ARTIFACTS.main.version} from Maven (exit 1)"
    )
    assert "Could not resolve dependencies" in rest[0]
    assert not (tmp_path / "cache" / maven.CASSANDRA_ARTIFACTS.key / maven.MARKER).exists()


def test_owner_defaults_to_cli_and_is_recorded_per_cluster(tmp_path):
    c = LocalCluster(tmp_path)
    c.run.save_state({"kafka": {"nodes": 3}, "cassandra": {"nodes": 3}})
    assert c.owner("kafka") == "cli"
    c.set_owner("kafka", "tests")
    assert (c.owner("kafka"), c.owner("cassandra")) == ("tests", "cli")
    assert c.node_count("kafka") == 3


def test_cli_run_dir_is_where_provisioning_finds_secrets_and_ca(tmp_path, monkeypatch):
    """`--run-dir X` without $PIPELINE_RUN_DIR: the command's settings read secrets and
    the CA under X (not ./.run), and the environment is as before once it returns."""
    from infra import cli
    from infra.settings import PipelineSettings

    monkeypatch.delenv("PIPELINE_RUN_DIR", raising=False)
    seen = {}

    def fake_run(args):
        sec = PipelineSettings().security
        seen["dirs"] = (sec.resolved_secrets_dir(), sec.resolved_ca_file())
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    assert cli.main(["--run-dir", str(tmp_path / "x"), "status"]) == 0
    x = (tmp_path / "x").resolve()
    assert seen["dirs"] == (x / "secrets", x / "certs" / "ca.crt")
    assert "PIPELINE_RUN_DIR" not in os.environ


def test_cli_provisions_the_instance_it_started_unless_told_other_servers(monkeypatch):
    """PIPELINE_INFRA_INSTANCE=1: `infra up` provisions 20092.. and 127.0.0.4.., not the
    defaults (instance 0's); servers named in the environment still win."""
    from infra import cli

    class Counted:
        def node_count(self, kind):
            return 3

    monkeypatch.setenv("PIPELINE_INFRA_INSTANCE", "1")
    monkeypatch.delenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("PIPELINE_CASSANDRA__CONTACT_POINTS", raising=False)
    s = cli._local_settings(Counted())
    assert s.kafka.bootstrap_servers == "127.0.0.1:20092,127.0.0.1:20093,127.0.0.1:20094"
    assert s.cassandra.contact_points == ["127.0.0.4", "127.0.0.5", "127.0.0.6"]
    monkeypatch.setenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", "kafka.example:9092")
    assert cli._local_settings(Counted()).kafka.bootstrap_servers == "kafka.example:9092"
