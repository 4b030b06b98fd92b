"""Bench only: a per-process GPU memory cap and a peak report, for processes started with this folder on PYTHONPATH.

BENCH_MEMORY_GIB caps what torch's allocator may hold in this process (torch.cuda.set_per_process_memory_fraction),
standing in for a smaller card without changing the trainer's code. At exit, one JSON line goes to BENCH_PEAK_FILE:
the allocator's peaks, and (where NVML answers) what the driver counts for this process, whose difference from
the reserved figure is the CUDA context a fraction does not count. bench/consumer.py sets both variables.
"""

import os

if os.environ.get("BENCH_MEMORY_GIB"):
    import atexit
    import json
    import time

    import torch

    if torch.cuda.is_available():
        _cap = float(os.environ["BENCH_MEMORY_GIB"]) * 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, _cap / torch.cuda.get_device_properties(0).total_memory))

        def _process_gib() -> float | None:
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == os.getpid() and proc.usedGpuMemory:
                        return proc.usedGpuMemory / 2**30
            except Exception:
                return None
            return None

        def _report() -> None:
            path = os.environ.get("BENCH_PEAK_FILE")
            if not path:
                return
            record = {
                "pid": os.getpid(),
                "time": time.time(),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                "reserved_now_gib": round(torch.cuda.memory_reserved() / 2**30, 2),
                "driver_process_gib": _process_gib(),
                "cap_gib": _cap / 2**30,
            }
            with open(path, "a") as out:
                out.write(json.dumps(record) + "\n")

        atexit.register(_report)
