import sys
import time

import pytest

from lcm_fleet.backoff import Backoff
from worker.fleet.launcher import Fleet
from worker.fleet.topology import Unit, numa_nodes, parse_cpulist, plan_units
from worker.render.pipeline import compile_devices


def test_parse_cpulist():
    assert parse_cpulist("0-3,8-9,12\n") == [0, 1, 2, 3, 8, 9, 12]
    assert parse_cpulist("5") == [5]


def test_numa_nodes_from_sysfs(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    for node, cpus in ((0, "0-3"), (1, "4-7"), (2, "")):
        d = tmp_path / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus)
    assert numa_nodes(tmp_path) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert numa_nodes(tmp_path / "nothing") == [list(range(8))]


def test_plan_one_unit_per_socket_and_gpu():
    units = plan_units([[0, 1], [2, 3]], ["CPU", "GPU.0", "GPU.1"], metrics_port=9000)
    assert [(u.name, u.device, u.cpus, u.metrics_port) for u in units] == [
        ("cpu0", "CPU", (0, 1), 9000),
        ("cpu1", "CPU", (2, 3), 9001),
        ("gpu0", "GPU.0", None, 9002),
        ("gpu1", "GPU.1", None, 9003),
    ]
    env = units[1].env()
    assert env["LCM_CPU_THREADS"] == "2" and env["LCM_CPU_PINNING"] == "true"
    assert env["LCM_DEVICE"] == "CPU" and env["LCM_UNIT"] == "cpu1"
    gpu = units[3].env()
    assert gpu["LCM_DEVICE"] == "GPU.1" and "LCM_CPU_THREADS" not in gpu


def test_plan_overrides_and_refusals():
    assert [u.device for u in plan_units([[0]], ["CPU", "GPU"], wanted=["GPU"])] == ["GPU"]
    single = plan_units([[0, 1, 2, 3]], ["CPU"], metrics_port=0)
    assert len(single) == 1 and single[0].cpus == (0, 1, 2, 3) and single[0].metrics_port == 0
    with pytest.raises(ValueError, match=r"GPU\.3, which OpenVINO does not offer"):
        plan_units([[0]], ["CPU", "GPU.0"], wanted=["GPU.3"])


def test_gpu_worker_can_keep_the_text_encoder_on_cpu():
    assert compile_devices("GPU.1", "CPU") == ("CPU", "GPU.1", "GPU.1")
    assert compile_devices("GPU", None) == ("GPU",)
    assert compile_devices("CPU", "CPU") == ("CPU",)


def _fleet(code: int, **kw):
    units = [Unit("cpu0", "CPU", None, 0)]
    cmd = [sys.executable, "-c", f"import sys; sys.exit({code})"]
    return Fleet(units, cmd, env={}, backoff=Backoff(0.01, 0.02, 99), **kw)


def _run_until(fleet, done, timeout_s=20.0):
    fleet.start()
    deadline = time.monotonic() + timeout_s
    while not done(fleet) and time.monotonic() < deadline:
        time.sleep(0.05)
        fleet.poll()


def test_dead_worker_is_restarted_then_given_up():
    fleet = _fleet(1, max_restarts=3, stable_s=60)
    _run_until(fleet, lambda f: not f.alive())
    member = fleet.members[0]
    assert member.starts == 4 and "died 4 times" in member.given_up


def test_config_exit_is_not_restarted():
    fleet = _fleet(2, max_restarts=3)
    _run_until(fleet, lambda f: not f.alive())
    assert fleet.members[0].starts == 1 and "code 2" in fleet.members[0].given_up


def test_broker_unreachable_exit_is_restarted_without_giving_up():
    fleet = _fleet(4, max_restarts=1, stable_s=60)
    _run_until(fleet, lambda f: f.members[0].starts >= 5)
    member = fleet.members[0]
    assert member.starts >= 5 and member.given_up is None and fleet.alive()
    fleet.stop()
