"""What the speed benchmarks share: the machine's name, MNIST images (or random stand-ins)
and interleaved timing. Imported by the scripts next to it (``python benchmarks/<x>.py``
puts this directory on the path; loaders by file path add it themselves)."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch


def mnist_images(n: int, size: int = 784):
    """n MNIST training images (pixels / 255) and labels, or random stand-ins in [0, 1]."""
    try:
        from neurosim.data import load_dataset
        ds = load_dataset("mnist")
        return ds.train_x[:n].float().contiguous(), ds.train_y[:n].contiguous(), "MNIST"
    except Exception:  # noqa: BLE001 - any missing-data error: fall back to random images
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n, size, generator=g), torch.randint(0, 10, (n,), generator=g),
                "random images")


def cpu_name() -> str:
    """The CPU's model name (what `lscpu | grep 'Model name'` shows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(candidates, repeats, device, width: int = 10) -> dict:
    """Time each candidate ``(name, fn, n_samples)`` ``repeats`` times, interleaved round by
    round (so a burst of other load on a shared machine hits all of them alike); returns
    name -> (best, median) in ms per sample and prints every repeat (the best is the least
    disturbed)."""
    times = {name: [] for name, _, _ in candidates}
    for _ in range(repeats):
        for name, fn, n_samples in candidates:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / n_samples * 1e3)
    out = {}
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        out[name] = best, median
        print(f"  {name:{width}s} {best:.5f} ms/sample best, {median:.5f} median   (repeats: "
              f"{', '.join(f'{t:.5f}' for t in values)})", flush=True)
    return out
