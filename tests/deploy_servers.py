"""Real deployments a company's Redis comes as, started on 127.0.0.1 for the ``deploy`` tier.

- :class:`Cluster`: 3 primaries and 3 replicas (``--cluster-enabled yes``, then
  ``redis-cli --cluster create … --cluster-replicas 1``), with a short node timeout so a
  killed primary is replaced within seconds; with certificates, nodes that speak only TLS
  (clients, cluster bus and replication).
- :class:`SentinelSet`: 1 primary, 2 replicas and 3 Sentinels (``redis-server --sentinel``)
  with a short ``down-after-milliseconds``.
- :func:`tls_server`: one server on ``--tls-port`` with a CA and a server certificate made
  by ``openssl`` in the test's folder.

Ports are free ports of 127.0.0.1 (a server and, for cluster nodes, its bus port at +10000),
chosen again if a server cannot bind one (the two CI legs run at once).  Every process is
ours: :meth:`stop` ends exactly those.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

START_S = 30.0
"""How long a deployment may take to come up on a loaded 2-core machine."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(bus: bool = False) -> int:
    """A port of 127.0.0.1 nobody listens on (and, with ``bus``, whose +10000 is free too)."""
    for _ in range(1000):
        port = random.randint(20000, 29999 if bus else 40000)
        if _port_free(port) and (not bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def wait_until(what: str, check: object, timeout_s: float = START_S) -> None:
    """Poll ``check()`` (start-up has no event to wait on) until it is true."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout_s:g} s (last error: {last})")


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    folder: Path
    argv: list[str] = field(default_factory=list)
    tls: dict[str, object] = field(default_factory=dict)
    """Client options for a server that speaks only TLS."""

    def client(self, **options: object) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True,
                         **{**self.tls, **options})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the cluster or the Sentinels."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """Start the killed server again, same port and folder (a cluster node rejoins from its
        nodes.conf, a Sentinel-managed one is turned into a replica by the Sentinels)."""
        assert not self.alive()
        self.proc = _popen(self.argv, self.folder)
        wait_until(f"server {self.port} answers again", lambda: _ready(self))


def _popen(argv: list[str], folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "server.log", "ab") as log:
        return subprocess.Popen(argv, cwd=folder, stdout=log, stderr=subprocess.STDOUT)


def _start(binary: str, folder: Path, args: list[str], port: int) -> Node:
    return Node(port, _popen([binary, *args], folder), folder, [binary, *args])


def _ready(node: Node, **options: object) -> bool:
    if not node.alive():
        log = (node.folder / "server.log").read_text()[-400:]
        raise OSError(f"the server on port {node.port} exited ({log})")
    return bool(node.client(**options).ping())


@dataclass
class Cluster:
    """A 3-primary / 3-replica Redis Cluster of ``binary`` in ``folder``."""

    binary: str
    folder: Path
    certs: dict[str, Path] | None = None
    """With certificates (:func:`make_certificates`) every node speaks only TLS, to clients,
    on the cluster bus and for replication (``--tls-cluster yes --tls-replication yes``)."""
    nodes: list[Node] = field(default_factory=list)

    def start(self) -> Cluster:
        for attempt in range(3):
            ports = []
            while len(ports) < 6:
                port = free_port(bus=True)
                if port not in ports:
                    ports.append(port)
            self.nodes = [
                _start(self.binary, self.folder / f"a{attempt}-{port}", [
                    *self._listen(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                    "--cluster-replica-validity-factor", "0", "--save", "", "--appendonly", "no",
                ], port)
                for port in ports
            ]  # fmt: skip
            for node in self.nodes:
                node.tls = self.client_tls()
            try:
                for node in self.nodes:
                    wait_until(f"cluster node {node.port} answers", lambda n=node: _ready(n), 10)
                break
            except pytest.fail.Exception:
                self.stop()
                if attempt == 2:
                    raise
        tls = ["--tls", "--cacert", str(self.certs["ca"])] if self.certs else []
        create = subprocess.run(
            ["redis-cli", *tls, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        wait_until("the cluster is ok with 3 primaries and 3 replicas", self.healthy)
        return self

    def _listen(self, port: int) -> list[str]:
        if not self.certs:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", str(self.certs["server"]), "--tls-key-file", str(self.certs["server-key"]),
                "--tls-ca-cert-file", str(self.certs["ca"]), "--tls-auth-clients", "no"]  # fmt: skip

    def client_tls(self) -> dict[str, object]:
        return {"ssl": True, "ssl_ca_certs": str(self.certs["ca"])} if self.certs else {}

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and each primary has a connected replica."""
        live = [n for n in self.nodes if n.alive()]
        for node in live:
            if node.client().cluster("info").get("cluster_state") != "ok":
                return False
        roles = [node.client().execute_command("ROLE") for node in live]
        primaries = [r for r in roles if r[0] == "master"]
        return len(primaries) == 3 and all(len(r[2]) >= 1 for r in primaries)

    def owner(self, key: str) -> Node:
        """The node that serves ``key``'s slot now."""
        client = self.any_live().client()
        slot = int(client.cluster("keyslot", key))
        for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return self.by_port(int(primary[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, primary: Node) -> Node:
        role = primary.client().execute_command("ROLE")
        return self.by_port(int(role[2][0][1]))

    def not_serving(self, key: str) -> Node:
        """A primary that does not serve ``key``'s slot (it answers MOVED)."""
        owner = self.owner(key)
        for node in self.nodes:
            if node is not owner and node.alive() and node.client().execute_command("ROLE")[0] == "master":
                return node
        raise AssertionError("no other primary")

    def by_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def any_live(self) -> Node:
        return next(n for n in self.nodes if n.alive())

    def url(self, node: Node | None = None) -> str:
        """A URL naming ``node`` (``rediss://…?ssl_ca_certs=CA`` when the nodes speak TLS)."""
        port = (node or self.nodes[0]).port
        if self.certs:
            return f"rediss://127.0.0.1:{port}?ssl_ca_certs={self.certs['ca']}"
        return f"redis://127.0.0.1:{port}"

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.terminate()
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)
            if node.alive():
                node.kill()


@dataclass
class SentinelSet:
    """One primary, two replicas and three Sentinels watching them as :attr:`service`."""

    binary: str
    folder: Path
    service: str = "town-redis"
    certs: dict[str, Path] | None = None
    """With certificates (:func:`make_certificates`) every server and Sentinel speaks only TLS."""
    servers: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    def start(self) -> SentinelSet:
        for attempt in range(3):
            try:
                return self._start(attempt)
            except pytest.fail.Exception:
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, attempt: int) -> SentinelSet:
        """Start on fresh free ports (another process may take one between the check and the
        bind: then :meth:`start` tries again)."""
        self.servers, self.sentinels = [], []
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        ports = list(dict.fromkeys(free_port() for _ in range(6)))
        if len(ports) < 6:
            pytest.fail("the same free port was drawn twice")
        primary = ports[0]
        tls: list[str] = []
        if self.certs:
            tls = ["--tls-replication", "yes", "--tls-auth-clients", "no",
                   "--tls-cert-file", str(self.certs["server"]),
                   "--tls-key-file", str(self.certs["server-key"]),
                   "--tls-ca-cert-file", str(self.certs["ca"])]  # fmt: skip
        listen = (lambda port: ["--port", "0", "--tls-port", str(port)]) if self.certs else (
            lambda port: ["--port", str(port)])
        self.servers = [
            _start(self.binary, self.folder / f"a{attempt}-redis-{port}", [
                *listen(port), *common, *tls,
                *(["--replicaof", "127.0.0.1", str(primary)] if port != primary else []),
            ], port)
            for port in ports[:3]
        ]  # fmt: skip
        for port in ports[3:]:
            folder = self.folder / f"a{attempt}-sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = " ".join(listen(port) + tls).replace(" --", "\n").removeprefix("--")
            (folder / "sentinel.conf").write_text(
                f"{conf}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 2\n"
            )
            self.sentinels.append(_start(self.binary, folder, ["sentinel.conf", "--sentinel"], port))
        for node in self.servers + self.sentinels:
            if self.certs:
                node.tls = {"ssl": True, "ssl_ca_certs": str(self.certs["ca"])}
            wait_until(f"server {node.port} answers", lambda n=node: _ready(n), 10)
        wait_until("the Sentinels see the primary, 2 replicas and each other", self.healthy)
        return self

    def primary(self) -> Node:
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        return next(n for n in self.servers if n.port == int(port))

    def healthy(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.service)
            if int(state["num-slaves"]) < 2 or int(state["num-other-sentinels"]) < 2:
                return False
        role = self.primary().client().execute_command("ROLE")
        return role[0] == "master" and len(role[2]) == 2

    def url(self, scheme: str = "redis+sentinel") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{scheme}://{hosts}/{self.service}"

    def stop(self) -> None:
        for node in self.sentinels + self.servers:
            if node.alive():
                node.proc.terminate()
        for node in self.sentinels + self.servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)
            if node.alive():
                node.kill()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, made with ``openssl``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Tinytown test CA",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]))
    csr = folder / "server.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(paths["server-key"]), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]), "-CAkey", str(paths["ca-key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(paths["server"]))
    return paths


def ca_folder(certs: dict[str, Path]) -> Path:
    """A folder holding the CA as ``<subject hash>.0``: what ``ssl_ca_path=`` names."""
    folder = certs["ca"].parent / "ca-folder"
    folder.mkdir(exist_ok=True)
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(certs["ca"])],
                            check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    shutil.copy(certs["ca"], folder / f"{digest}.0")
    return folder


def encrypted_key(certs: dict[str, Path], passphrase: str) -> Path:
    """The server's key encrypted with ``passphrase`` (a client key given with ``ssl_password=``)."""
    path = certs["server-key"].parent / "encrypted-key.pem"
    subprocess.run(["openssl", "pkey", "-in", str(certs["server-key"]), "-aes256",
                    "-passout", f"pass:{passphrase}", "-out", str(path)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return path


@contextlib.contextmanager
def tls_server(binary: str, folder: Path) -> Iterator[tuple[Node, dict[str, Path]]]:
    """A server that speaks only TLS (``--port 0 --tls-port P``), clients not asked for a
    certificate; yields it and the certificate paths."""
    certs = make_certificates(folder / "certs")
    port = free_port()
    node = _start(binary, folder / "server", [
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs["server"]), "--tls-key-file", str(certs["server-key"]),
        "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no",
    ], port)  # fmt: skip
    try:
        wait_until("the TLS server answers", lambda: _ready(node, ssl=True, ssl_ca_certs=str(certs["ca"])))
        yield node, certs
    finally:
        if node.alive():
            node.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)
        node.kill()


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
