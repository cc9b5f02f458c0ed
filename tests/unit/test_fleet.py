import sys
import time

import pytest
from pydantic import ValidationError

from lcm_fleet.backoff import Backoff
from worker.fleet.launcher import Fleet
from worker.fleet.layout import (
    DEFAULT_CORES_PER_PROCESS,
    DEFAULT_MAX_PROCESSES,
    LayoutError,
    LayoutSettings,
    LayoutSource,
    choose_layout,
    split_cpus,
)
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
    assert env["LCM_CONCURRENCY"] == "2" and env["LCM_CPU_THREADS"] == "1"
    assert env["LCM_CPU_PINNING"] == "true"
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


# ---------------------------------------------------------------- render processes per unit


@pytest.mark.parametrize(
    ("cores", "processes", "threads"),
    [
        (1, 1, 1),
        (2, 2, 1),
        (3, 3, 1),
        (8, 8, 1),
        (12, 6, 2),
        (16, 8, 2),
        (56, 8, 7),
        (64, 8, 8),
        (60, 6, 10),
    ],
)
def test_default_layout_from_the_core_count(cores, processes, threads):
    layout = choose_layout(cores)
    assert (layout.processes, layout.threads) == (processes, threads)
    assert layout.source is LayoutSource.DEFAULT
    assert layout.idle_cores == 0
    assert layout.processes * DEFAULT_CORES_PER_PROCESS <= cores
    assert layout.processes <= DEFAULT_MAX_PROCESSES
    assert "default" in layout.describe()


def test_one_setting_overrides_and_the_other_follows_from_the_cores():
    by_processes = choose_layout(8, concurrency=2)
    assert (by_processes.processes, by_processes.threads) == (2, 4)
    by_threads = choose_layout(8, cpu_threads=1)
    assert (by_threads.processes, by_threads.threads) == (8, 1)
    assert by_threads.source is LayoutSource.SETTINGS
    both = choose_layout(8, concurrency=3, cpu_threads=2)
    assert (both.processes, both.threads, both.idle_cores) == (3, 2, 2)
    assert "2 idle" in both.describe() and "LCM_CONCURRENCY" in both.describe()
    assert both.env() == {
        "LCM_CONCURRENCY": "3",
        "LCM_CPU_THREADS": "2",
        "LCM_CPU_PINNING": "true",
    }


def test_layouts_that_need_more_cores_than_the_unit_are_refused():
    with pytest.raises(LayoutError, match=r"LCM_CONCURRENCY=3 x LCM_CPU_THREADS=2 needs 6 cores"):
        choose_layout(4, concurrency=3, cpu_threads=2)
    with pytest.raises(LayoutError, match=r"LCM_CONCURRENCY=5 .* 4 cores"):
        choose_layout(4, concurrency=5)
    with pytest.raises(LayoutError, match=r"LCM_CPU_THREADS=9 is more than the unit's 8 cores"):
        choose_layout(8, cpu_threads=9)


def test_plan_gives_each_cpu_unit_its_layout():
    units = plan_units([[0, 1, 2, 3], [4, 5]], ["CPU", "GPU"], concurrency=2)
    assert [(u.layout.processes, u.layout.threads) for u in units if u.layout] == [(2, 2), (2, 1)]
    assert units[0].env()["LCM_CONCURRENCY"] == "2" and units[1].env()["LCM_CPU_THREADS"] == "1"
    assert units[2].layout is None and "LCM_CONCURRENCY" not in units[2].env()
    with pytest.raises(LayoutError):
        plan_units([[0, 1]], ["CPU"], cpu_threads=4)


def test_split_cpus_gives_each_render_process_its_own_cores():
    assert split_cpus([3, 1, 2, 0], 2, 2) == ((0, 1), (2, 3))
    assert split_cpus([0, 1, 2], 1, 2) == ((0, 1),)
    with pytest.raises(LayoutError, match="need 4 cores; this worker may run on 3"):
        split_cpus([0, 1, 2], 2, 2)


def test_layout_settings_read_the_worker_variables(monkeypatch):
    monkeypatch.setenv("LCM_CONCURRENCY", "2")
    monkeypatch.delenv("LCM_CPU_THREADS", raising=False)
    settings = LayoutSettings()
    assert (settings.concurrency, settings.cpu_threads) == (2, None)
    monkeypatch.setenv("LCM_CPU_THREADS", "0")
    with pytest.raises(ValidationError, match="cpu_threads"):
        LayoutSettings()


def test_fleet_refuses_a_layout_that_does_not_fit(monkeypatch, capsys):
    from worker.fleet import launcher

    monkeypatch.setattr(launcher, "numa_nodes", lambda: [[0, 1]])
    monkeypatch.setattr(launcher, "openvino_devices", lambda: ["CPU"])
    monkeypatch.setenv("LCM_CONCURRENCY", "2")
    monkeypatch.setenv("LCM_CPU_THREADS", "2")
    assert launcher.main(["--plan"]) == 2
    assert "LCM_CONCURRENCY=2 x LCM_CPU_THREADS=2 needs 4 cores" in capsys.readouterr().err
    monkeypatch.delenv("LCM_CPU_THREADS")
    assert launcher.main(["--plan"]) == 0
    out = capsys.readouterr().out
    assert "render=2 render processes x 1 thread of 2 cores (LCM_CONCURRENCY" in out


def test_worker_splits_its_cores_between_render_processes(monkeypatch):
    from types import SimpleNamespace

    from worker.runtime import Runtime

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {4, 5, 6, 7})

    def runtime(**settings):
        base = dict(device="CPU", cpu_pinning=True, cpu_threads=2, concurrency=2)
        return Runtime(settings=SimpleNamespace(**{**base, **settings}), model=None)

    assert runtime().render_cpu_sets() == ((4, 5), (6, 7))
    assert "cpus 4,5 | 6,7, pinned" in runtime().describe_rendering()
    assert runtime(concurrency=1).render_cpu_sets() is None
    assert runtime(cpu_pinning=None).render_cpu_sets() is None
    assert runtime(cpu_threads=None).render_cpu_sets() is None
    assert runtime(device="GPU").render_cpu_sets() is None
    assert runtime(concurrency=3).render_cpu_sets() is None  # 6 threads on 4 cores: shared
    assert "shared" in runtime(concurrency=3).describe_rendering()
