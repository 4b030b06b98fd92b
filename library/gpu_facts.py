#!/usr/bin/python
"""Ansible module: report a host's NVIDIA GPUs by UUID, read through NVML (ctypes, no dependencies)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Report the host's NVIDIA GPUs by UUID through NVML
description:
  - Loads C(libnvidia-ml.so.1) with ctypes (nothing to install on the host) and reports every GPU in NVML
    (PCI bus) order; name, memory, compute capability, power constraints, default, current and enforced
    limits, persistence mode, temperature, power draw and compute processes.
  - A host without a usable driver reports no GPUs and says why in C(gpu_facts_nvml); it does not fail.
  - Changes nothing; supports check mode.
options:
  library:
    description: The NVML library to load.
    type: str
    default: libnvidia-ml.so.1
author: gpu-runner
"""

EXAMPLES = r"""
- name: Read GPU facts
  gpu_facts:
  register: gpu_facts_result
"""

RETURN = r"""
ansible_facts:
  description: C(gpu_facts_gpus) (list of GPUs), C(gpu_facts_by_uuid), C(gpu_facts_nvml) ("ok" or why not),
    C(gpu_facts_driver_version).
  returned: always
  type: dict
"""

import ctypes  # noqa: E402  (Ansible wants DOCUMENTATION first)

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

NVML_SUCCESS = 0
NVML_TEMPERATURE_GPU = 0


class NvmlError(Exception):
    pass


class PciInfo(ctypes.Structure):
    _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                ("busId", ctypes.c_char * 32)]


class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class ProcessInfo(ctypes.Structure):  # the v2/v3 layout
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class Nvml:
    """The few NVML calls we need; every value in NVML's units (mW, bytes)."""

    def __init__(self, library):
        try:
            self.lib = ctypes.CDLL(library)
        except OSError:
            raise NvmlError(f"no NVIDIA driver (NVML library {library} not found)") from None
        self.call("nvmlInit_v2")

    def call(self, name, *args):
        fn = getattr(self.lib, name, None)
        if fn is None:
            raise NvmlError(f"{name} is not in this driver's NVML")
        ret = fn(*args)
        if ret != NVML_SUCCESS:
            err = self.lib.nvmlErrorString
            err.restype = ctypes.c_char_p
            raise NvmlError(f"{name}: {(err(ret) or b'error').decode()} ({ret})")

    def optional(self, name, *args):
        """A reading some boards do not support: False when NVML refuses it."""
        try:
            self.call(name, *args)
        except NvmlError:
            return False
        return True

    def text(self, name, handle, size=96):
        buf = ctypes.create_string_buffer(size)
        self.call(name, handle, buf, ctypes.c_uint(size))
        return buf.value.decode()

    def uint(self, name, *args):
        value = ctypes.c_uint()
        return value.value if self.optional(name, *args, ctypes.byref(value)) else None

    def processes(self, handle):
        count = ctypes.c_uint(64)
        procs = (ProcessInfo * 64)()
        if not self.optional("nvmlDeviceGetComputeRunningProcesses_v3", handle, ctypes.byref(count), procs):
            return []
        return [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // 2**20, "name": process_name(p.pid)}
                for p in procs[:count.value]]

    def gpu(self, index):
        handle = ctypes.c_void_p()
        self.call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(handle))
        pci, mem = PciInfo(), Memory()
        self.call("nvmlDeviceGetPciInfo_v3", handle, ctypes.byref(pci))
        self.call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(mem))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.call("nvmlDeviceGetCudaComputeCapability", handle, ctypes.byref(major), ctypes.byref(minor))
        low, high = ctypes.c_uint(), ctypes.c_uint()
        if not self.optional("nvmlDeviceGetPowerManagementLimitConstraints", handle,
                             ctypes.byref(low), ctypes.byref(high)):
            low.value = high.value = 0
        limit = self.uint("nvmlDeviceGetPowerManagementLimit", handle)
        enforced = self.uint("nvmlDeviceGetEnforcedPowerLimit", handle)
        persistence = self.uint("nvmlDeviceGetPersistenceMode", handle)
        return {
            "index": index,
            "uuid": self.text("nvmlDeviceGetUUID", handle),
            "name": self.text("nvmlDeviceGetName", handle),
            "pci_bus_id": pci.busId.decode(),
            "memory_total_mib": mem.total // 2**20,
            "compute_capability": [major.value, minor.value],
            "power_min_w": watts(low.value),
            "power_max_w": watts(high.value),
            "power_default_w": watts(self.uint("nvmlDeviceGetPowerManagementDefaultLimit", handle)),
            "power_limit_w": watts(limit),
            "enforced_limit_w": watts(enforced if enforced is not None else limit),
            "power_w": watts(self.uint("nvmlDeviceGetPowerUsage", handle)),
            "persistence_mode": None if persistence is None else bool(persistence),
            "temperature_c": self.uint("nvmlDeviceGetTemperature", handle, ctypes.c_int(NVML_TEMPERATURE_GPU)),
            "processes": self.processes(handle),
        }

    def gpus(self):
        count = ctypes.c_uint()
        self.call("nvmlDeviceGetCount_v2", ctypes.byref(count))
        return [self.gpu(i) for i in range(count.value)]

    def driver_version(self):
        buf = ctypes.create_string_buffer(80)
        return buf.value.decode() if self.optional("nvmlSystemGetDriverVersion", buf, ctypes.c_uint(80)) else None

    def close(self):
        self.optional("nvmlShutdown")


def watts(milliwatts):
    return None if milliwatts is None else milliwatts / 1000  # NVML reports mW; our config is in W


def process_name(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return None


def read_facts(library):
    facts = {"gpu_facts_gpus": [], "gpu_facts_nvml": "ok", "gpu_facts_driver_version": None}
    try:
        nvml = Nvml(library)
    except NvmlError as why:
        facts["gpu_facts_nvml"] = str(why)
    else:
        try:
            facts["gpu_facts_gpus"] = nvml.gpus()
            facts["gpu_facts_driver_version"] = nvml.driver_version()
        finally:
            nvml.close()
    facts["gpu_facts_by_uuid"] = {g["uuid"]: g for g in facts["gpu_facts_gpus"]}
    return facts


def main():
    module = AnsibleModule(argument_spec={"library": {"type": "str", "default": "libnvidia-ml.so.1"}},
                           supports_check_mode=True)
    try:
        facts = read_facts(module.params["library"])
    except NvmlError as err:
        module.fail_json(msg=f"NVML: {err}")
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
