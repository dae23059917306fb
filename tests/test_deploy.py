"""A town on the Redis a company runs: a Redis Cluster (3 primaries, 3 replicas; also with
nodes that speak only TLS), a Sentinel-managed primary, TLS, an ACL user with exactly the
commands a town needs.

The deployments are real servers on 127.0.0.1 (tests/deploy_servers.py), started once per
module.  Failovers are real: SIGKILL of the primary that serves the town (the cluster's
replica or the Sentinels promote another), or a manual ``CLUSTER FAILOVER``.  Each failover
test counts what was sent and what arrived, and prints how long calls answered
``unavailable``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from conftest import clean_env, make_config, start_redis_server
from deploy_servers import (
    Cluster,
    Node,
    SentinelSet,
    ca_folder,
    encrypted_key,
    make_certificates,
    remove,
    tls_server,
    wait_until,
)
from mcp_support import ok, stdio
from redis import Redis as SyncRedis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import NoPermissionError
from runner_support import open_spawn_town, task_settled
from servers import server_binary

from tinytown.acl import CLUSTER_COMMANDS, TOWN_COMMANDS, acl_rules, acl_setuser_line
from tinytown.config import check_redis_url
from tinytown.connect import client_for_url
from tinytown.errors import Unavailable
from tinytown.masking import mask_url, scrub, strip_password, url_secrets
from tinytown.models import MessageKind, TaskState
from tinytown.scripts import TOWN_LUA
from tinytown.topology import SentinelRedis, TownCluster, parse_sentinel_url
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.deploy]


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n  {line}")


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["redis7", "redis6.2"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    folder = Path(f"/tmp/tt-cluster-{os.getpid()}-{request.param}")
    remove(folder)
    started = Cluster(server_binary(request.param), folder).start()
    try:
        yield started
    finally:
        started.stop()
        remove(folder)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[Cluster]:
    """A cluster whose nodes speak only TLS, to clients, on the bus and for replication."""
    folder = Path(f"/tmp/tt-tls-cluster-{os.getpid()}")
    remove(folder)
    started = Cluster(server_binary("redis7"), folder / "nodes", make_certificates(folder / "certs")).start()
    try:
        yield started
    finally:
        started.stop()
        remove(folder)


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    folder = Path(f"/tmp/tt-sentinel-{os.getpid()}")
    remove(folder)
    started = SentinelSet(server_binary("redis7"), folder).start()
    try:
        yield started
    finally:
        started.stop()
        remove(folder)


@pytest.fixture(params=["redis7", "redis6.2"])
def sentinels_of_each_version(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelSet]:
    """The module's Redis 7 Sentinel set, or a Redis 6.2 one for this test alone."""
    if request.param == "redis7":
        yield request.getfixturevalue("sentinels")
        return
    started = SentinelSet(server_binary(request.param), tmp_path / "sentinel").start()
    try:
        yield started
    finally:
        started.stop()


async def open_town(url: str, name: str) -> Town:
    town = Town(await client_for_url(url), make_config(name))
    await town.ensure_conductor()
    return town


@pytest.fixture
async def closing() -> AsyncIterator[list[Town]]:
    """Towns a test opened, reset and closed afterwards."""
    towns: list[Town] = []
    yield towns
    for town in towns:
        with anyio.move_on_after(30), anyio.CancelScope(shield=True):
            try:
                await town.reset()
            except Unavailable:
                pass
            await town.redis.aclose()


async def workload(town: Town) -> None:
    """What a town does all day: send, receive, assign, claim, report, status, history,
    listings, acknowledgements, reset."""
    await town.register_agent("bob")
    await town.send("conductor", "bob", "hello bob")
    got = await town.receive("bob", timeout_s=10)
    assert [m.body for m in got.messages] == ["hello bob"]
    task = await town.assign("2 + 2", agent="bob")
    got = await town.receive("bob", timeout_s=10)
    assert [(m.kind, m.task_id) for m in got.messages] == [(MessageKind.TASK, task.id)]
    assert (await town.complete_task(task.id, "4", by="bob")).state == TaskState.COMPLETED
    later = await town.assign("later, from the backlog")
    assert (await town.claim("bob", later.id)).state == TaskState.RUNNING
    assert (await town.fail_task(later.id, "could not", by="bob")).state == TaskState.FAILED
    notices = await town.receive("conductor", timeout_s=10)
    assert {m.task_id for m in notices.messages} == {task.id, later.id}
    await town.ack("conductor", [m.id for m in notices.messages])
    status = await town.status()
    assert (status.tasks["completed"], status.tasks["failed"]) == (1, 1)
    assert status.server is not None
    assert {t.id for t in (await town.list_tasks(agent="bob")).tasks} == {task.id, later.id}
    assert {a.name for a in await town.list_agents()} == {"conductor", "bob"}
    assert {"message.sent", "task.completed", "task.failed"} <= {e.type for e in await town.history(50)}
    stats = await town.retention.stats(sample=0)
    assert stats.total.keys > 10 and stats.total.bytes and stats.used_memory
    assert await town.reset() > 0


async def send_until_stored(town: Town, body: str, unavailable: list[float]) -> None:
    """Send like a client that meets ``unavailable``: try again (the same message id, so a
    send whose reply was lost is not stored twice), recording when it was refused."""
    while True:
        try:
            await town.send("conductor", "bob", body)
            return
        except Unavailable:
            unavailable.append(time.monotonic())
            await anyio.sleep(0.1)


async def receive_all(town: Town, count: int, timeout_s: float = 60) -> list[str]:
    bodies: list[str] = []
    with anyio.fail_after(timeout_s):
        while len(bodies) < count:
            got = await town.receive("bob", timeout_s=5, max_messages=100)
            bodies += [m.body for m in got.messages]
    return bodies


async def blocked_on(node: Node, count: int = 1) -> None:
    """Wait until ``count`` clients are blocked (in BLPOP) on ``node``."""
    def blocked() -> bool:
        return int(node.client().info("clients")["blocked_clients"]) >= count
    await anyio.to_thread.run_sync(lambda: wait_until(f"a client blocked on {node.port}", blocked))


def synced(primary: Node) -> bool:
    """Every replica of ``primary`` has all it wrote (so a SIGKILL loses nothing acknowledged)."""
    role = primary.client().execute_command("ROLE")
    return bool(role[2]) and all(int(r[2]) >= int(role[1]) for r in role[2])


async def failover_during_blocked_receive(
    town: Town, primary: Node, failover: object, capsys: pytest.CaptureFixture[str], label: str,
) -> None:
    """A receive waits on ``primary``; the failover happens; messages are sent as it goes
    on.  The waiting receive gets the first; every message sent arrives, once."""
    await town.register_agent("bob")
    await town.open_session("bob")
    await town.send("conductor", "bob", "before")
    assert [m.body for m in (await town.receive("bob", timeout_s=5)).messages] == ["before"]
    unavailable: list[float] = []
    result: dict[str, object] = {}

    async def waiting() -> None:
        got = await town.receive("bob", timeout_s=60)
        result["first"] = [m.body for m in got.messages]
        result["at"] = time.monotonic()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting)
        await blocked_on(primary)
        await anyio.to_thread.run_sync(lambda: wait_until("replicas in sync", lambda: synced(primary)))
        started = time.monotonic()
        await anyio.to_thread.run_sync(failover)  # type: ignore[arg-type]
        for n in range(20):
            await send_until_stored(town, f"after {n}", unavailable)
        stored = time.monotonic()
    rest = await receive_all(town, 20 - len(result["first"]))  # type: ignore[arg-type]
    bodies = result["first"] + rest  # type: ignore[operator]
    assert bodies == [f"after {n}" for n in range(20)]  # all of them, once, in order
    assert (await town.receive("bob", timeout_s=0)).messages == []
    window = (unavailable[-1] - started) if unavailable else 0.0
    show(capsys, f"{label}: {len(unavailable)} send(s) answered unavailable over {window:.1f} s; "
         f"first send stored {stored - started:.1f} s after the failover began; "
         f"the waiting receive returned {result['at'] - started:.1f} s after it")  # type: ignore[operator]
    assert window < 15


# ----------------------------------------------------------------- Redis Cluster


async def test_a_town_works_through_a_url_naming_a_replica_or_a_node_that_does_not_serve_its_slot(
    cluster: Cluster, town_name: str, closing: list[Town],
) -> None:
    seq = f"tt:{{{town_name}}}:seq"
    owner = cluster.owner(seq)
    for node in (cluster.replica_of(owner), cluster.not_serving(seq)):
        town = await open_town(cluster.url(node), town_name)
        closing.append(town)
        assert isinstance(town.redis, TownCluster)
        await workload(town)
    # every key of the town lives in the one slot, on the one node serving it
    town = closing[0]
    await town.register_agent("bob")
    await town.send("conductor", "bob", "keep me")
    await town.assign("keep me too", agent="bob")
    pattern = f"tt:\\{{{town_name}\\}}:*"
    keys = list(owner.client().scan_iter(match=pattern, count=1000))
    assert len(keys) > 10
    assert {owner.client().cluster("keyslot", k) for k in keys} == {owner.client().cluster("keyslot", seq)}
    for node in cluster.nodes:
        if node is not owner and node.client().execute_command("ROLE")[0] == "master":
            assert list(node.client().scan_iter(match=pattern, count=1000)) == []


@pytest.mark.parametrize("how", ["kill", "manual"])
async def test_a_receive_blocked_before_a_cluster_failover_gets_what_is_sent_after_it_and_loses_nothing(
    cluster: Cluster, town_name: str, closing: list[Town], how: str, capsys: pytest.CaptureFixture[str],
) -> None:
    seq = f"tt:{{{town_name}}}:seq"
    owner = cluster.owner(seq)
    replica = cluster.replica_of(owner)
    town = await open_town(cluster.url(cluster.not_serving(seq)), town_name)
    closing.append(town)

    def failover() -> None:
        if how == "kill":
            owner.kill()
        else:
            replica.client().execute_command("CLUSTER FAILOVER")

    try:
        await failover_during_blocked_receive(
            town, owner, failover, capsys, f"cluster ({how}, {owner.folder.parent.name})"
        )
        assert cluster.owner(seq) is replica  # it was a failover indeed
    finally:
        if not owner.alive():
            owner.restart()
        await anyio.to_thread.run_sync(lambda: wait_until("the cluster is whole again", cluster.healthy))


async def test_a_runner_keeps_going_across_a_failover_of_its_towns_primary(
    cluster: Cluster, town_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    seq = f"tt:{{{town_name}}}:seq"
    owner = cluster.owner(seq)
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(tmp_path)
    env["REDIS_URL"] = cluster.url(cluster.not_serving(seq))
    (tmp_path / "tinytown.toml").write_text(f'name = "{town_name}"\n')
    try:
        async with open_spawn_town(env) as town:
            await town.spawn_agent("alice", cli="scripted")
            after = await town.last_event_id()
            first = await town.assign("2 + 3", agent="alice")
            assert (await task_settled(town, first.id, after, 60)).result == "2 + 3 = 5"
            started = time.monotonic()
            await anyio.to_thread.run_sync(owner.kill)
            unavailable = 0
            while True:  # the conductor's own call meets the failover like any client
                try:
                    after = await town.last_event_id()
                    second = await town.assign("6 * 7", agent="alice")
                    break
                except Unavailable:
                    unavailable += 1
                    await anyio.sleep(0.2)
            assigned = time.monotonic() - started
            done = await task_settled(town, second.id, after, 90)
            assert done.state == TaskState.COMPLETED and done.result == "6 * 7 = 42"
            alice = await town.get_agent("alice")
            assert alice.pid and alice.state.value in ("idle", "working")
            show(capsys, f"runner across a SIGKILLed primary: the conductor's assign answered "
                 f"unavailable {unavailable} time(s), stored {assigned:.1f} s after the kill; "
                 f"the runner completed it {time.monotonic() - started:.1f} s after the kill")
            await town.reset()
    finally:
        if not owner.alive():
            owner.restart()
        await anyio.to_thread.run_sync(lambda: wait_until("the cluster is whole again", cluster.healthy))


async def test_a_town_works_on_a_cluster_whose_nodes_speak_only_tls_with_the_ca_named_in_the_url(
    tls_cluster: Cluster, town_name: str, closing: list[Town], capsys: pytest.CaptureFixture[str],
) -> None:
    seq = f"tt:{{{town_name}}}:seq"
    owner = tls_cluster.owner(seq)
    replica = tls_cluster.replica_of(owner)
    ca = str(tls_cluster.certs["ca"])  # type: ignore[index]
    url = tls_cluster.url(tls_cluster.not_serving(seq))
    assert url.startswith("rediss://") and f"ssl_ca_certs={ca}" in url
    check_redis_url(url)
    town = await open_town(url, town_name)
    closing.append(town)
    assert isinstance(town.redis, TownCluster)
    await workload(town)

    # a receive blocked on the town's primary is woken by a send
    await town.register_agent("bob")
    got: dict[str, list[str]] = {}

    async def waiting() -> None:
        got["bodies"] = [m.body for m in (await town.receive("bob", timeout_s=30)).messages]

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting)
        await blocked_on(owner)
        await town.send("conductor", "bob", "wake up")
    assert got["bodies"] == ["wake up"]
    await town.reset()

    # a failover moves the slot: the client refreshes its slot map and connects to the new
    # primary with the URL's TLS options (a connection without them is refused by every node)
    def failover() -> None:
        replica.client().execute_command("CLUSTER FAILOVER")

    await failover_during_blocked_receive(town, owner, failover, capsys, "cluster over TLS (manual)")
    assert tls_cluster.owner(seq) is replica
    assert town.redis.get_node_from_key(seq).port == replica.port  # the client's map was refreshed
    assert await town.redis.ping(target_nodes=TownCluster.ALL_NODES)  # every node the map names
    opened = [(n.port, c) for n in town.redis.get_nodes() for c in n._connections]
    primaries = {n.port for n in tls_cluster.nodes if n.client().execute_command("ROLE")[0] == "master"}
    assert replica.port in primaries and primaries <= {port for port, _ in opened}
    for port, connection in opened:
        assert isinstance(connection, SSLConnection), port
        assert connection.ca_certs == ca, port

    # without the CA no node is trusted: refused, TLS is really checked
    with pytest.raises(Unavailable):
        with anyio.fail_after(30):
            await open_town(f"rediss://127.0.0.1:{owner.port}", town_name)


async def test_a_receive_blocked_before_a_sigkill_of_a_tls_clusters_primary_gets_what_is_sent_after_it(
    tls_cluster: Cluster, town_name: str, closing: list[Town], capsys: pytest.CaptureFixture[str],
) -> None:
    """The killed primary's connection drops; the client finds the promoted replica in the
    slot map it asks the other nodes for, over TLS with the URL's CA."""
    seq = f"tt:{{{town_name}}}:seq"
    owner = tls_cluster.owner(seq)
    replica = tls_cluster.replica_of(owner)
    town = await open_town(tls_cluster.url(tls_cluster.not_serving(seq)), town_name)
    closing.append(town)
    try:
        await failover_during_blocked_receive(town, owner, owner.kill, capsys, "cluster over TLS (kill)")
        assert tls_cluster.owner(seq) is replica
    finally:
        if not owner.alive():
            owner.restart()
        await anyio.to_thread.run_sync(lambda: wait_until("the cluster is whole again", tls_cluster.healthy))


async def test_a_ca_folder_and_a_client_key_passphrase_in_the_url_reach_every_node_of_a_tls_cluster(
    tls_cluster: Cluster, town_name: str, closing: list[Town],
) -> None:
    """``ssl_ca_path`` and ``ssl_password``, which redis-py's cluster client does not take."""
    certs = tls_cluster.certs
    assert certs is not None
    folder, key = ca_folder(certs), encrypted_key(certs, "key-pass-123")
    node = tls_cluster.nodes[0]
    url = (f"rediss://127.0.0.1:{node.port}?ssl_ca_path={folder}"
           f"&ssl_certfile={certs['server']}&ssl_keyfile={key}&ssl_password=key-pass-123")
    check_redis_url(url)
    town = await open_town(url, town_name)
    closing.append(town)
    assert isinstance(town.redis, TownCluster)
    await workload(town)
    assert await town.redis.ping(target_nodes=TownCluster.ALL_NODES)
    opened = [c for n in town.redis.get_nodes() for c in n._connections]
    assert len({c.port for c in opened}) >= 3  # the primaries at least, found in the slot map
    for connection in opened:
        assert isinstance(connection, SSLConnection)
        tls = connection.ssl_context
        assert (tls.ca_path, tls.password) == (str(folder), "key-pass-123")
    # a wrong passphrase does not open the key: the option is really used
    with pytest.raises(Unavailable):
        with anyio.fail_after(30):
            await open_town(url.replace("key-pass-123", "wrong-pass"), town_name)


# ----------------------------------------------------------------- Sentinel


async def test_a_town_works_through_a_sentinel_url(
    sentinels_of_each_version: SentinelSet, town_name: str, closing: list[Town],
) -> None:
    sentinels = sentinels_of_each_version
    town = await open_town(sentinels.url(), town_name)
    closing.append(town)
    assert isinstance(town.redis, SentinelRedis)
    await workload(town)
    expected = "6.2." if sentinels.binary == server_binary("redis6.2") else "7."
    for node in (sentinels.primary(), sentinels.sentinels[0]):
        assert node.client().info("server")["redis_version"].startswith(expected)


@pytest.mark.parametrize("how", ["kill", "manual"])
async def test_a_receive_blocked_before_a_sentinel_failover_gets_what_is_sent_after_it_and_loses_nothing(
    sentinels: SentinelSet, town_name: str, closing: list[Town], how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    town = await open_town(sentinels.url(), town_name)
    closing.append(town)
    primary = sentinels.primary()

    def failover() -> None:
        if how == "kill":
            primary.kill()
        else:  # SENTINEL FAILOVER: the primary is demoted to a replica, not killed
            sentinels.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", sentinels.service)
            # (a write that reaches the old primary between the promotion and its demotion is
            # lost with Sentinel's asynchronous replication: the sends start once it is demoted)
            wait_until("the old primary is a replica", lambda: primary.client().role()[0] == "slave")

    try:
        await failover_during_blocked_receive(town, primary, failover, capsys, f"sentinel ({how})")
        assert sentinels.primary() is not primary  # a replica was promoted
    finally:
        if not primary.alive():
            primary.restart()
        await anyio.to_thread.run_sync(lambda: wait_until("two replicas again", sentinels.healthy, 60))


async def test_an_mcp_session_waiting_in_receive_goes_on_across_a_sentinel_failover(
    sentinels: SentinelSet, town_name: str, tmp_path: Path, closing: list[Town],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real ``tinytown-mcp`` over stdio: its ``receive`` waits when the primary dies, and
    returns the message sent after the failover; the same session's next calls work."""
    url = sentinels.url()
    town = await open_town(url, town_name)
    closing.append(town)
    await town.register_agent("bob")
    env = clean_env() | {"TINYTOWN_TOWN": str(tmp_path), "REDIS_URL": url}
    (tmp_path / "tinytown.toml").write_text(f'name = "{town_name}"\n')
    primary = sentinels.primary()
    got: dict[str, object] = {}
    try:
        with anyio.fail_after(120), (tmp_path / "mcp.err").open("w") as err:
            async with stdio(env, "bob", errlog=err) as bob:
                assert (await ok(bob, "whoami"))["agent"]["name"] == "bob"

                async def waiting() -> None:
                    got.update(await ok(bob, "receive", timeout_s=60))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiting)
                    await blocked_on(primary)
                    started = time.monotonic()
                    await anyio.to_thread.run_sync(primary.kill)
                    await send_until_stored(town, "sent after the failover", [])
                assert [m["body"] for m in got["messages"]] == ["sent after the failover"]  # type: ignore[attr-defined]
                took = time.monotonic() - started
                show(capsys, f"MCP receive across a Sentinel failover returned {took:.1f} s after the kill")
                await ok(bob, "send_message", to="conductor", body="still here")
                notes = await town.receive("conductor", timeout_s=10)
                assert [m.body for m in notes.messages] == ["still here"]
    finally:
        if not primary.alive():
            primary.restart()
        await anyio.to_thread.run_sync(lambda: wait_until("two replicas again", sentinels.healthy, 60))


# ----------------------------------------------------------------- TLS and ACL


async def test_a_town_works_over_tls_with_the_ca_named_in_the_url(
    tmp_path: Path, town_name: str, closing: list[Town],
) -> None:
    with tls_server(server_binary("redis7"), tmp_path) as (node, certs):
        url = f"rediss://127.0.0.1:{node.port}?ssl_cert_reqs=required&ssl_ca_certs={certs['ca']}"
        check_redis_url(url)
        town = await open_town(url, town_name)
        closing.append(town)
        await workload(town)
        # without the CA the server's certificate is refused: TLS is really checked
        with pytest.raises(Unavailable):
            await open_town(f"rediss://127.0.0.1:{node.port}", town_name)
        await town.redis.aclose()
        closing.clear()


async def test_a_town_works_through_a_rediss_sentinel_url_with_the_ca_named_in_it(
    tmp_path: Path, town_name: str, closing: list[Town],
) -> None:
    certs = make_certificates(tmp_path / "certs")
    tls = SentinelSet(server_binary("redis7"), tmp_path / "sentinel", certs=certs).start()
    try:
        url = tls.url("rediss+sentinel") + f"?ssl_ca_certs={certs['ca']}"
        check_redis_url(url)
        town = await open_town(url, town_name)
        closing.append(town)
        await workload(town)
        # without the CA no Sentinel is trusted: refused at once, saying which were tried
        with pytest.raises(Unavailable, match="no Sentinel names a reachable primary of 'town-redis'"):
            with anyio.fail_after(10):
                await open_town(tls.url("rediss+sentinel"), town_name)
        await town.redis.aclose()
        closing.clear()
    finally:
        tls.stop()


@pytest.mark.parametrize("kind", ["redis7", "valkey", "redis6.2"])
async def test_an_acl_user_with_exactly_the_documented_commands_runs_a_town(
    tmp_path: Path, town_name: str, closing: list[Town], kind: str,
) -> None:
    proc, sock = start_redis_server(tmp_path / "acl", server_binary(kind))
    try:
        admin = SyncRedis(unix_socket_path=sock, decode_responses=True)
        admin.execute_command("ACL", "SETUSER", "town", "reset", "on", ">s3cret-pw", *acl_rules(town_name))
        url = f"unix://town:s3cret-pw@{sock}"
        town = await open_town(url, town_name)
        closing.append(town)
        await workload(town)
        # the rules are tight: another town's keys and other commands are refused
        with pytest.raises(Unavailable, match="NOPERM|permission"):
            await open_town(url, "othertown")
        limited = SyncRedis(unix_socket_path=sock, username="town", password="s3cret-pw")
        with pytest.raises(NoPermissionError):
            limited.get("tt:{othertown}:seq")
        with pytest.raises(NoPermissionError):
            limited.execute_command("FLUSHALL")
        await town.redis.aclose()
        closing.clear()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_acl_user_with_the_documented_cluster_commands_runs_a_town_on_a_cluster(
    cluster: Cluster, town_name: str, closing: list[Town],
) -> None:
    user = f"u{town_name}"
    for node in cluster.nodes:
        node.client().execute_command("ACL", "SETUSER", user, "reset", "on", ">pw-of-the-town",
                                      *acl_rules(town_name, cluster=True))
    try:
        town = await open_town(f"redis://{user}:pw-of-the-town@127.0.0.1:{cluster.nodes[0].port}", town_name)
        closing.append(town)
        await workload(town)
    finally:
        for node in cluster.nodes:
            node.client().execute_command("ACL", "DELUSER", user)


def test_the_readme_shows_the_acl_the_code_needs() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert acl_setuser_line("tinytown", "myproject") in readme
    assert "+" + " +".join(c.lower() for c in CLUSTER_COMMANDS) in readme


def test_the_acl_names_every_command_the_town_script_calls() -> None:
    import re

    called = {c.upper() for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", TOWN_LUA)}
    assert called, "the script calls Redis"
    missing = called - set(TOWN_COMMANDS)
    assert not missing, f"add {sorted(missing)} to tinytown/acl.py TOWN_COMMANDS and the README's ACL"


# ----------------------------------------------------------------- URL forms


def test_sentinel_urls_are_parsed_with_hosts_service_db_and_credentials() -> None:
    parsed = parse_sentinel_url(
        "rediss+sentinel://app:p%40ss@10.1.0.1:26379,10.1.0.2:26380,[::1]:26381/town-redis/3"
        "?sentinel_password=sp&ssl_ca_certs=/etc/ca.pem"
    )
    assert parsed.sentinels == [("10.1.0.1", 26379), ("10.1.0.2", 26380), ("::1", 26381)]
    assert (parsed.service, parsed.db, parsed.tls) == ("town-redis", 3, True)
    assert (parsed.options["username"], parsed.options["password"]) == ("app", "p@ss")
    assert parsed.options["ssl_ca_certs"] == "/etc/ca.pem"
    assert parsed.sentinel_options == {"password": "sp"}
    assert parse_sentinel_url("redis+sentinel://h/svc").sentinels == [("h", 26379)]


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:1/", "redis+sentinel:///svc", "redis+sentinel://h:99999/svc",
    "redis+sentinel://h:1/svc/x", "redis+sentinel://h:1/svc?no_such_option=1",
])
def test_unusable_sentinel_urls_are_refused_when_configured(url: str) -> None:
    with pytest.raises(ValueError, match="not a usable Sentinel URL"):
        check_redis_url(url)


def test_passwords_in_sentinel_urls_are_masked_everywhere() -> None:
    url = "redis+sentinel://app:hunter22@h1:26379,h2:26379/svc?sentinel_password=sentinel-secret"
    assert mask_url(url) == "redis+sentinel://app:****@h1:26379,h2:26379/svc?sentinel_password=****"
    assert "hunter22" not in scrub(f"cannot reach {url}: refused")
    assert "sentinel-secret" not in scrub(f"cannot reach {url}: refused")
    assert strip_password(url) == "redis+sentinel://app@h1:26379,h2:26379/svc"
    assert url_secrets(url) == {"hunter22", "sentinel-secret"}
    tls = "rediss+sentinel://:pw-123@h1:26379/svc"
    assert mask_url(tls) == "rediss+sentinel://:****@h1:26379/svc"
    assert "pw-123" not in scrub(f"error: {tls}")
