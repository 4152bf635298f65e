"""What the machine is doing, sampled by rank 0 at each report point (MLflow's "System metrics").

Names are MLflow's own system-metric names (mlflow/system_metrics/metrics/), so the MLflow UI
files them under its System metrics tab (it takes every key that starts with `system/`).
Sampled in the worker, not by MLflow's monitor thread: the worker never talks to MLflow (the
sweep driver logs from the run dir, riding out outages), and a sample per report point costs
a few microseconds.
"""

from __future__ import annotations

import psutil
import torch


def sample(device: torch.device | None = None) -> dict[str, float]:
    """CPU and memory of this node, and the memory of rank 0's GPU where it trains on one."""
    memory = psutil.virtual_memory()
    out = {
        # Since the previous call (the previous report point): psutil keeps the last reading.
        "cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system_memory_usage_percentage": memory.percent,
    }
    if device is not None and device.type == "cuda":
        index = device.index or 0
        out[f"gpu_{index}_memory_usage_megabytes"] = torch.cuda.memory_reserved(device) / 2**20
        total = torch.cuda.get_device_properties(device).total_memory
        out[f"gpu_{index}_memory_usage_percentage"] = 100.0 * torch.cuda.memory_reserved(device) / total
        try:
            out[f"gpu_{index}_utilization_percentage"] = float(torch.cuda.utilization(device))
        except Exception:  # needs pynvml (or amdsmi); memory is enough without it
            pass
    return out
