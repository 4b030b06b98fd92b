"""The simulated nvidia-smi: its query forms, compute apps, limit setting with the real messages, persistence."""

from conftest import UUID_3090TI, UUID_4090, Sim


def test_smi_query_gpu_csv_forms(sim: Sim) -> None:
    fields = ("index,uuid,name,pci.bus_id,power.draw,power.limit,power.default_limit,power.min_limit,"
              "power.max_limit,enforced.power.limit,temperature.gpu,utilization.gpu,memory.used,memory.total,"
              "persistence_mode,driver_version,compute_cap")
    full = sim.smi(f"--query-gpu={fields}", "--format=csv")
    assert full.returncode == 0
    header, first, second = full.stdout.splitlines()
    assert header.startswith("index, uuid, name, pci.bus_id, power.draw [W], power.limit [W],")
    row = first.split(", ")
    assert row[:4] == ["0", UUID_3090TI, "NVIDIA GeForce RTX 3090 Ti", "00000000:01:00.0"]
    assert row[5:10] == ["450.00 W", "450.00 W", "100.00 W", "480.00 W", "450.00 W"]
    assert row[12:] == ["1 MiB", "24564 MiB", "Disabled", "550.120", "8.6"]
    assert second.split(", ")[-1] == "8.9"

    bare = sim.smi("--query-gpu", "uuid,power.min_limit,power.limit,utilization.gpu",
                   "--format=csv,noheader,nounits")
    assert bare.stdout == f"{UUID_3090TI}, 100.00, 450.00, 0\n{UUID_4090}, 150.00, 450.00, 0\n"
    assert sim.smi("-i", "1", "--query-gpu=index,name", "--format=csv,noheader").stdout == \
        "1, NVIDIA GeForce RTX 4090\n"
    bad = sim.smi("--query-gpu=index,watts", "--format=csv")
    assert bad.returncode != 0 and 'Field "watts" is not a valid field to query.' in bad.stdout


def test_smi_query_compute_apps(sim: Sim) -> None:
    apps = ["--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv,noheader,nounits"]
    assert sim.smi(*apps).stdout == ""
    vllm = sim.spawn("vllm")
    assert sim.smi(*apps).stdout == f"{vllm.pid}, 20000, {UUID_4090}\n"
    with_header = sim.smi("--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv").stdout
    assert with_header.splitlines()[0] == "pid, used_memory [MiB], gpu_uuid"
    assert "20000 MiB" in with_header
    assert f"{vllm.pid}" in sim.smi().stdout  # the summary table's process list


def test_smi_sets_limits_with_the_real_messages(sim: Sim) -> None:
    done = sim.smi("-pl", "350")
    assert done.returncode == 0
    assert "Power limit for GPU 00000000:01:00.0 was set to 350.00 W from 450.00 W." in done.stdout
    assert "Power limit for GPU 00000000:02:00.0 was set to 350.00 W from 450.00 W." in done.stdout
    assert done.stdout.endswith("All done.\n")

    one = sim.smi("-i", UUID_4090, "-pl", "300")
    assert one.returncode == 0 and "00000000:01:00.0" not in one.stdout
    assert "was set to 300.00 W from 350.00 W." in one.stdout
    limits = sim.smi("--query-gpu=power.limit,enforced.power.limit", "--format=csv,noheader,nounits")
    assert limits.stdout == "350.00, 350.00\n300.00, 300.00\n"

    high = sim.smi("-i", "0", "-pl", "500")
    assert high.returncode != 0
    assert ("Provided power limit 500.00 W is not a valid power limit which should be between 100.00 W and "
            "480.00 W for GPU 00000000:01:00.0") in high.stdout

    nobody = sim.smi("-pl", "300", as_nobody=True)
    assert nobody.returncode == 4 and "Insufficient Permissions" in nobody.stdout
    assert sim.smi("-i", "9", "-pl", "300").returncode != 0  # no such GPU


def test_smi_persistence_mode_and_reports(sim: Sim) -> None:
    done = sim.smi("-i", "0", "-pm", "1")
    assert done.returncode == 0 and "Enabled persistence mode for GPU 00000000:01:00.0." in done.stdout
    pm = sim.smi("--query-gpu=persistence_mode", "--format=csv,noheader").stdout
    assert pm == "Enabled\nDisabled\n"
    assert "Warning: persistence mode is disabled" not in sim.smi("-i", "0", "-pl", "400").stdout

    power = sim.smi("-q", "-d", "POWER")
    assert power.returncode == 0 and "GPU Power Readings" in power.stdout
    lines = [line.strip() for line in power.stdout.splitlines()
             if "Power Limit" in line or "Power Draw" in line]
    assert "Current Power Limit               : 400.00 W" in lines
    assert "Default Power Limit               : 450.00 W" in lines
    assert "Max Power Limit                   : 600.00 W" in lines
    assert sum(line.startswith("Power Draw") for line in lines) == 2

    table = sim.smi().stdout
    assert "NVIDIA GeForce RTX 3090 Ti" in table and "Driver Version: 550.120" in table
    assert sim.smi("-L").stdout.splitlines()[1] == f"GPU 1: NVIDIA GeForce RTX 4090 (UUID: {UUID_4090})"
