"""NVML access for the host side: GPU facts by UUID, power limits, live readings.

All NVML power values are milliwatts; everything here is watts. Hosts without an NVIDIA driver
raise NvmlUnavailable with the reason, so callers can skip GPU steps and say why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pynvml

# On Ampere+, nvmlDeviceGetPowerUsage is a 1 s average; the instant field shows spikes
FIELD_POWER_INSTANT = getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", 186)


class NvmlUnavailable(Exception):
    """No usable NVIDIA driver on this host; the message says why."""


@dataclass
class Gpu:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total_mib: int
    compute_capability: tuple[int, int]
    power_min_w: float
    power_max_w: float
    power_default_w: float
    power_limit_w: float
    enforced_limit_w: float
    persistence_mode: bool | None
    processes: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def nvml() -> Iterator[None]:
    """Initialise NVML for the block; translate 'no driver' into NvmlUnavailable."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        raise NvmlUnavailable("no NVIDIA driver (NVML library libnvidia-ml.so.1 not found)") from None
    except pynvml.NVMLError_DriverNotLoaded:
        raise NvmlUnavailable("the NVIDIA driver is installed but not loaded") from None
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"NVML failed to start: {err}") from None
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional(call, *args, default=None):
    """An NVML reading that some boards do not support."""
    try:
        return call(*args)
    except pynvml.NVMLError:
        return default


def handle(uuid: str):
    return pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())


def compute_processes(h) -> list[dict]:
    procs = _optional(pynvml.nvmlDeviceGetComputeRunningProcesses, h, default=[]) or []
    return [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // 2**20} for p in procs]


def read_gpu(index: int) -> Gpu:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    min_mw, max_mw = _optional(pynvml.nvmlDeviceGetPowerManagementLimitConstraints, h, default=(0, 0))
    limit_mw = _optional(pynvml.nvmlDeviceGetPowerManagementLimit, h, default=0)
    persistence = _optional(pynvml.nvmlDeviceGetPersistenceMode, h)
    return Gpu(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
        name=_text(pynvml.nvmlDeviceGetName(h)),
        pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(h).busId),
        memory_total_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
        compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
        power_min_w=min_mw / 1000,
        power_max_w=max_mw / 1000,
        power_default_w=_optional(pynvml.nvmlDeviceGetPowerManagementDefaultLimit, h, default=0) / 1000,
        power_limit_w=limit_mw / 1000,
        enforced_limit_w=_optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, h, default=limit_mw) / 1000,
        persistence_mode=None if persistence is None else bool(persistence),
        processes=compute_processes(h),
    )


def list_gpus() -> list[Gpu]:
    """Every GPU in PCI bus order (NVML's order, which CUDA follows with CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    return [read_gpu(i) for i in range(pynvml.nvmlDeviceGetCount())]


def set_power_limit(uuid: str, watts: float) -> None:
    """Set one GPU's limit; needs root. NVML errors propagate with their own message."""
    pynvml.nvmlDeviceSetPowerManagementLimit(handle(uuid), round(watts * 1000))


def enforced_limit_w(uuid: str) -> float:
    return pynvml.nvmlDeviceGetEnforcedPowerLimit(handle(uuid)) / 1000


def sample(uuid: str) -> dict:
    """One telemetry reading of a GPU: power (average and instant), limit, temperature, load, memory."""
    h = handle(uuid)
    instant = _optional(pynvml.nvmlDeviceGetFieldValues, h, [FIELD_POWER_INSTANT])
    instant_w = None
    if instant is not None and instant[0].nvmlReturn == pynvml.NVML_SUCCESS:
        instant_w = _field_value(instant[0]) / 1000
    util = _optional(pynvml.nvmlDeviceGetUtilizationRates, h)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    return {
        "uuid": uuid,
        "power_w": _optional(pynvml.nvmlDeviceGetPowerUsage, h, default=0) / 1000,
        "instant_power_w": instant_w,
        "limit_w": _optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, h, default=0) / 1000,
        "temperature_c": _optional(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "utilization_pct": util.gpu if util is not None else None,
        "memory_used_mib": mem.used // 2**20,
    }


def _field_value(value) -> float:
    # The union member that holds the reading depends on the field's value type
    kinds = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}
    return float(getattr(value.value, kinds.get(value.valueType, "uiVal")))


def busy_gpus(uuids: list[str]) -> dict[str, list[dict]]:
    """The GPUs among `uuids` that have compute processes, with those processes."""
    return {u: procs for u in uuids if (procs := compute_processes(handle(u)))}
