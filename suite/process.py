"""Whether a process is alive, and who it is: what tells a live worker or writer from a dead one that left
something behind (a sweep's RUNNING trial, a checkpoint's temporary file)."""
from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_id(pid: int) -> str | None:
    """boot id + start time of process `pid` (Linux): tells a live worker from another process that got its pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (after "pid (comm)")
    except (OSError, IndexError):
        return None
