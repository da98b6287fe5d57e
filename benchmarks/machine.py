"""Facts about this machine that every benchmark records next to its figures."""

import os
import platform
import sys


def _first(path, prefix):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_facts():
    """CPU count and model, memory, kernel, Python and load average."""
    mem_kib = _first("/proc/meminfo", "MemTotal:")
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "mem_gib": round(int(mem_kib.split()[0]) / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
