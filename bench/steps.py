"""The steps of a benchmark: each command in a process of its own, a finished one reused, and the CPU's flags that
every timing is written beside."""

import subprocess
import sys
import time
from pathlib import Path


def cpu_flags():
    """The CPU's bf16 flags (avx512_bf16, amx_bf16), or 'none': the figures beside every timing."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted({flag for flag in ("avx512_bf16", "amx_bf16") if flag in text.split()})
    return ", ".join(flags) or "none (AVX2 at most: float32)"


def run_step(name, command, done, log):
    """Run command (a python -m module and its flags) in a process of its own unless done (a path, or None for a
    step never reused) exists; its seconds, logged in log under name."""
    if done is not None and Path(done).exists():
        print(f"[{name}] reused: {done}", flush=True)
        return None
    print(f"[{name}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command], check=True)
    seconds = time.perf_counter() - started
    log[name] = seconds
    return seconds
