"""The simulated NVML library, driven by unmodified nvidia-ml-py, and its nvidia-smi.

Each NVML check runs in a fresh subprocess (its own pynvml and environment). Run: pytest tests/gpu_sim
"""

import random
import subprocess
import sys
import textwrap

import pytest
from conftest import PRELUDE, UUID_3090TI, UUID_4090, Sim


def test_devices_match_the_profile(sim: Sim) -> None:
    out = sim.nvml("""
        out = {"driver": n.nvmlSystemGetDriverVersion(), "cuda": n.nvmlSystemGetCudaDriverVersion(),
               "nvml": n.nvmlSystemGetNVMLVersion(), "gpus": []}
        for d in h:
            bus = n.nvmlDeviceGetPciInfo(d).busId
            out["gpus"].append({
                "name": n.nvmlDeviceGetName(d), "uuid": n.nvmlDeviceGetUUID(d), "bus": bus,
                "cc": n.nvmlDeviceGetCudaComputeCapability(d), "total": n.nvmlDeviceGetMemoryInfo(d).total,
                "total_v2": n.nvmlDeviceGetMemoryInfo(d, version=n.nvmlMemory_v2).total,
                "by_uuid": n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(d))),
                "by_bus": n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByPciBusId(bus)),
                "minor": n.nvmlDeviceGetMinorNumber(d), "arch": n.nvmlDeviceGetArchitecture(d),
                "graphics": len(n.nvmlDeviceGetGraphicsRunningProcesses(d)),
                "reasons": n.nvmlDeviceGetCurrentClocksEventReasons(d)
                | n.nvmlDeviceGetCurrentClocksThrottleReasons(d)})
        out["unknown_uuid"] = error(n.nvmlDeviceGetHandleByUUID, "GPU-00000000-0000-0000-0000-000000000000")
        n.nvmlShutdown()
    """)
    assert (out["driver"], out["cuda"], out["nvml"]) == ("550.120", 12040, "12.550.120")
    gib24 = 24564 * 2**20
    assert out["gpus"] == [
        {"name": "NVIDIA GeForce RTX 3090 Ti", "uuid": UUID_3090TI, "bus": "00000000:01:00.0", "cc": [8, 6],
         "total": gib24, "total_v2": gib24, "by_uuid": 0, "by_bus": 0, "minor": 0,
         "arch": 7, "graphics": 0, "reasons": 0},
        {"name": "NVIDIA GeForce RTX 4090", "uuid": UUID_4090, "bus": "00000000:02:00.0", "cc": [8, 9],
         "total": gib24, "total_v2": gib24, "by_uuid": 1, "by_bus": 1, "minor": 1,
         "arch": 8, "graphics": 0, "reasons": 0},
    ]
    assert out["unknown_uuid"] == "NVMLError_NotFound"


def test_limits_and_constraints_match_the_profile(sim: Sim) -> None:
    out = sim.nvml("""
        out = [[*n.nvmlDeviceGetPowerManagementLimitConstraints(d),
                n.nvmlDeviceGetPowerManagementDefaultLimit(d), n.nvmlDeviceGetPowerManagementLimit(d),
                n.nvmlDeviceGetEnforcedPowerLimit(d), n.nvmlDeviceGetPowerManagementMode(d)] for d in h]
    """)
    assert out == [
        [100_000, 480_000, 450_000, 450_000, 450_000, 1],
        [150_000, 600_000, 450_000, 450_000, 450_000, 1],
    ]


def test_a_limit_set_by_root_is_what_every_reader_sees(sim: Sim) -> None:
    sim.nvml("""
        n.nvmlDeviceSetPowerManagementLimit(h[0], 350_000)
        v2 = n.nvmlDeviceSetPowerManagementLimit_v2(h[1], n.NVML_POWER_SCOPE_GPU, 300_000)
        out = None
    """)
    out = sim.nvml("out = [(n.nvmlDeviceGetPowerManagementLimit(d), n.nvmlDeviceGetEnforcedPowerLimit(d))"
                   " for d in h]")
    assert out == [[350_000, 350_000], [300_000, 300_000]]
    state = sim.read()
    assert [g["power_limit_w"] for g in state["gpus"]] == [350, 300]
    assert state["limits_boot_id"] == "boot-1"


def test_a_limit_outside_the_constraints_is_an_invalid_argument(sim: Sim) -> None:
    out = sim.nvml("""
        out = [error(n.nvmlDeviceSetPowerManagementLimit, h[0], 500_000),
               error(n.nvmlDeviceSetPowerManagementLimit, h[1], 149_999),
               n.nvmlDeviceGetPowerManagementLimit(h[0]), n.nvmlDeviceGetPowerManagementLimit(h[1])]
    """)
    assert out == ["NVMLError_InvalidArgument", "NVMLError_InvalidArgument", 450_000, 450_000]


def test_only_root_may_set_limits_or_persistence(sim: Sim) -> None:
    out = sim.nvml("""
        out = [error(n.nvmlDeviceSetPowerManagementLimit, h[0], 300_000),
               error(n.nvmlDeviceSetPersistenceMode, h[0], 1), n.nvmlDeviceGetPowerManagementLimit(h[0])]
    """, as_nobody=True)
    assert out == ["NVMLError_NoPermission", "NVMLError_NoPermission", 450_000]


LOAD = """
out = []
for d in h:
    procs = n.nvmlDeviceGetComputeRunningProcesses(d)
    fields = n.nvmlDeviceGetFieldValues(d, [n.NVML_FI_DEV_POWER_AVERAGE, n.NVML_FI_DEV_POWER_INSTANT])
    out.append({"procs": sorted((p.pid, p.usedGpuMemory) for p in procs),
                "procs_v2": sorted(p.pid for p in n.nvmlDeviceGetComputeRunningProcesses_v2(d)),
                "used": n.nvmlDeviceGetMemoryInfo(d).used, "util": n.nvmlDeviceGetUtilizationRates(d).gpu,
                "power": n.nvmlDeviceGetPowerUsage(d), "average": fields[0].value.uiVal,
                "instant": fields[1].value.uiVal, "limit": n.nvmlDeviceGetEnforcedPowerLimit(d),
                "temp": n.nvmlDeviceGetTemperature(d, n.NVML_TEMPERATURE_GPU),
                "temp_v": n.nvmlDeviceGetTemperatureV(d, n.NVML_TEMPERATURE_GPU)})
"""


def test_matching_processes_load_their_gpus_until_they_exit(sim: Sim) -> None:
    idle = sim.nvml(LOAD)
    vllm = sim.spawn("vllm")
    train = sim.spawn("runner.train")
    busy = sim.nvml(LOAD)
    sim.stop(vllm)
    sim.stop(train)
    after = sim.nvml(LOAD)

    mib = 2**20
    assert busy[0]["procs"] == [[train.pid, 18000 * mib]]  # vllm runs on the 4090 only
    assert busy[1]["procs"] == sorted([[vllm.pid, 20000 * mib], [train.pid, 18000 * mib]])
    assert busy[1]["procs_v2"] == sorted([vllm.pid, train.pid])
    assert busy[0]["used"] == (1 + 18000) * mib  # the processes plus 1 MiB the driver keeps
    assert busy[1]["used"] == 24564 * mib  # 38000 MiB of processes cannot exceed the card
    for before, gpu, gone in zip(idle, busy, after, strict=True):
        assert before["procs"] == gone["procs"] == []
        assert before["util"] == gone["util"] == 0 and gpu["util"] == 95
        assert before["power"] < 30_000 and gone["power"] < 30_000  # about idle_power_w
        assert 0.85 * gpu["limit"] <= gpu["power"] <= gpu["limit"]
        assert gpu["average"] == gpu["power"]
        assert gpu["temp"] == gpu["temp_v"] > before["temp"] + 20


def test_energy_grows_with_the_power_drawn(sim: Sim) -> None:
    sim.spawn("vllm")
    out = sim.nvml("""
        import time
        start = time.monotonic()
        first = n.nvmlDeviceGetTotalEnergyConsumption(h[1])
        time.sleep(0.2)
        field = n.nvmlDeviceGetFieldValues(h[1], [n.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])[0]
        out = [field.value.ullVal - first, time.monotonic() - start,
               field.valueType == n.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG]
    """)
    used_mj, elapsed_s, is_ull = out
    assert is_ull and 0.2 * 350_000 < used_mj <= elapsed_s * 450_000  # mJ at about 0.9 x the 450 W limit


def test_a_forced_spike_shows_in_the_instant_field_only(sim: Sim) -> None:
    sim.spawn("runner.train")
    sim.force(1, instant_power_w=720, temperature_c=88)
    out = sim.nvml(LOAD)
    assert out[1]["instant"] == 720_000 > out[1]["limit"]
    assert out[1]["power"] <= out[1]["limit"]
    assert out[1]["temp"] == 88
    assert out[0]["instant"] < 600_000  # the other GPU is not forced

    sim.force(1, instant_power_w=None, power_w=900)
    assert sim.nvml(LOAD)[1]["power"] == 450_000  # a forced average is still capped at the limit


def test_a_reboot_restores_default_limits_and_persistence(sim: Sim) -> None:
    sim.nvml("""
        n.nvmlDeviceSetPowerManagementLimit(h[1], 300_000)
        n.nvmlDeviceSetPersistenceMode(h[1], 1)
        out = None
    """)
    read = "out = [n.nvmlDeviceGetPowerManagementLimit(h[1]), n.nvmlDeviceGetPersistenceMode(h[1])]"
    assert sim.nvml(read) == [300_000, 1]

    sim.boot_id.write_text("boot-2\n")
    assert sim.nvml(read, as_nobody=True) == [450_000, 0]  # nobody cannot persist the reset, but sees it
    assert sim.read()["limits_boot_id"] == "boot-1"
    assert sim.nvml(read) == [450_000, 0]
    state = sim.read()
    assert state["limits_boot_id"] == "boot-2"
    assert (state["gpus"][1]["power_limit_w"], state["gpus"][1]["persistence_mode"]) == (450, 0)


def test_concurrent_setters_lose_no_update(sim: Sim) -> None:
    setter = """
        import sys
        i = int(sys.argv[1])
        for w in range(200, 260):
            n.nvmlDeviceSetPowerManagementLimit(h[i], w * 1000)
        out = None
    """
    script = PRELUDE + textwrap.dedent(setter) + "\nprint(json.dumps(out))\n"
    setters = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=sim.env()) for i in (0, 1, 0, 1)]
    assert [p.wait(timeout=20) for p in setters] == [0, 0, 0, 0]
    state = sim.read()
    assert [g["power_limit_w"] for g in state["gpus"]] == [259, 259]
    assert not list(sim.state.parent.glob("state.json.tmp.*"))


def test_the_state_file_keeps_unknown_keys_and_unicode(sim: Sim) -> None:
    state = sim.read()
    state["note"] = {"by": "Zoë \u2603 \"quoted\"", "list": [1, 2.5, None, True]}
    sim.write(state)
    sim.nvml("n.nvmlDeviceSetPowerManagementLimit(h[0], 400_500); out = None")
    after = sim.read()
    assert after["note"] == state["note"]
    assert after["gpus"][0]["power_limit_w"] == 400.5


def test_without_a_state_file_the_driver_is_not_loaded(sim: Sim) -> None:
    sim.state.unlink()
    code = "import pynvml as n\ntry:\n    n.nvmlInit()\nexcept n.NVMLError_DriverNotLoaded:\n    print('none')"
    done = subprocess.run([sys.executable, "-c", code], env=sim.env(), capture_output=True, text=True)
    assert done.stdout == "none\n"
    smi = sim.smi()
    assert smi.returncode == 9 and "couldn't communicate with the NVIDIA driver" in smi.stdout


def test_a_setter_with_a_strict_umask_keeps_the_state_readable(sim: Sim) -> None:
    sim.state.chmod(0o644)
    sim.nvml("import os; os.umask(0o077); n.nvmlDeviceSetPowerManagementLimit(h[0], 300_000); out = None")
    assert sim.state.stat().st_mode & 0o777 == 0o644
    assert sim.nvml("out = n.nvmlDeviceGetPowerManagementLimit(h[0])", as_nobody=True) == 300_000


@pytest.mark.parametrize("text", ["", "{", '{"gpus": [', '{"gpus": []} x', '{"gpus": [0x1]}', '{"a": "\\ud800"}'])
def test_a_malformed_state_file_reads_as_no_driver(sim: Sim, text: str) -> None:
    sim.state.write_text(text)
    assert sim.smi("-L").returncode == 9


def test_mangled_state_files_never_crash_the_library(sim: Sim) -> None:
    text = sim.state.read_text()
    rng = random.Random(7)  # fixed: a failure names a reproducible mutation
    for _ in range(150):
        at = rng.randrange(len(text))
        mangled = text[:at] + rng.choice(['"', "{", "]", ",", "1", "-", "\\", "", "null"]) + text[at + 1:]
        sim.state.write_text(mangled)
        done = sim.smi("--query-gpu=index,uuid,power.limit,memory.used", "--format=csv")
        assert done.returncode in (0, 9), (done.returncode, mangled)
