"""Port checks: is a TCP port free to bind, or does something answer on it."""

from __future__ import annotations

import socket
import time

from infra.local.errors import InfraError
from infra.local.topology import NodeSpec


def port_free(host: str, port: int) -> bool:
    """True if (host, port) can be bound the way a Java server binds it (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts a TCP connection on (host, port)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_ports_free(node: NodeSpec, wait_s: float = 0.0) -> None:
    """Raise InfraError naming the node and port if any port the node binds is taken.

    `wait_s` > 0 polls that long first: a node just killed may hold its listening
    sockets until the kernel has torn the process down, which takes a while under load.
    """
    deadline = time.monotonic() + wait_s
    for role, port in node.ports.items():
        # Cassandra's local JMX listens on 127.0.0.1 whatever the node's address.
        host = "127.0.0.1" if role == "jmx" else node.host
        while not port_free(host, port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not port_free(host, port):
            raise InfraError(
                f"port {host}:{port} ({role}) needed by {node.name} is already in use "
                f"by another process; stop it or run `python -m infra down` first"
            )
