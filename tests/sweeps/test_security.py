"""The embedded Ray instance keeps token authentication on and starts no dashboard; the driver
joins the cluster in RAY_ADDRESS when ``ray.address`` is null; manifests are JSON."""

import json

import grpc
import psutil
import pytest
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode

from sweeps import runner
from sweeps.runner import _init_ray, _ray_init_kwargs
from tests.sweeps.conftest import tiny_plan


def test_embedded_ray_rejects_calls_without_the_token(local_ray):
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    gcs = ray.get_runtime_context().gcs_address
    with grpc.insecure_channel(gcs) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_embedded_ray_serves_no_dashboard(local_ray):
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    ports = {
        c.laddr.port
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ours
    }
    assert 8265 not in ports  # include_dashboard=False: no HTTP UI to expose


def test_embedded_ray_listens_on_loopback_only(local_ray):
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    assert listening  # the GCS, the raylet and the workers do listen
    assert {ip.removeprefix("::ffff:") for ip in listening} <= {"127.0.0.1", "::1"}, listening


def test_null_address_joins_ray_address_and_local_starts_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _ray_init_kwargs(tiny_plan(tmp_path))["address"] == "local"
    assert _ray_init_kwargs(tiny_plan(tmp_path))["num_cpus"] == 2
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    joined = _ray_init_kwargs(tiny_plan(tmp_path))
    assert joined["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in joined  # ray.init refuses num_cpus when joining
    assert _ray_init_kwargs(tiny_plan(tmp_path, "ray.address=local"))["address"] == "local"
    assert _ray_init_kwargs(tiny_plan(tmp_path, "ray.address=auto"))["address"] == "auto"
    for kwargs in (joined, _ray_init_kwargs(tiny_plan(tmp_path))):
        assert kwargs["include_dashboard"] is False and "runtime_env" not in kwargs


def test_ship_code_sends_our_packages_to_the_cluster(tmp_path):
    import dataclasses
    from pathlib import Path

    plan = tiny_plan(tmp_path)
    plan.ray = dataclasses.replace(plan.ray, ship_code=True)
    shipped = [Path(p) for p in _ray_init_kwargs(plan)["runtime_env"]["py_modules"]]
    assert [p.name for p in shipped] == ["landscape", "sweeps"]
    assert (shipped[0] / "train.py").is_file() and (shipped[1] / "workers.py").is_file()


def test_a_user_who_disables_token_auth_is_warned(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(runner.ray, "init", lambda **kw: calls.append(kw))
    logs = []
    assert _init_ray(tiny_plan(tmp_path), logs.append)
    assert calls and any("disables Ray's token authentication" in line for line in logs)


def test_manifest_is_plain_json(tmp_path):
    from sweeps.manifest import build_manifest

    plan = tiny_plan(tmp_path)
    manifest = build_manifest(plan, None, [v.variant_id for v in plan.variants], [])
    assert json.loads(json.dumps(manifest, default=str))["variants"] == 8
