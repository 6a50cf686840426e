"""Will a request fit? The memory a sampling request holds at once, estimated from the runs' configs before anything
is allocated, against what the machine has free: a request that cannot fit is one line, not an allocation traceback
minutes in (the disk side is store.runs.check_disk_space)."""

import math
import os


def available_memory():
    """Bytes of memory this process could still take: MemAvailable of /proc/meminfo (Linux), else the physical
    memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed, what, advice):
    """A one-line ValueError when `needed` bytes (of `what`) exceed the memory available."""
    available = available_memory()
    if needed > available:
        raise ValueError(f"{what} would take about {size_text(needed)} of memory at once, and {size_text(available)} "
                         f"is available: {advice}")


def size_text(count):
    """Bytes as a short human figure: 512 B, 3.1 MiB, 1.2 TiB."""
    if count < 1024:
        return f"{count} B"
    exponent = min(int(math.log(count, 1024)), 6)
    return f"{count / 1024 ** exponent:.1f} {'KMGTPE'[exponent - 1]}iB"
