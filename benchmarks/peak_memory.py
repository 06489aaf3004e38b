"""Peak memory of a command in a fresh process, for the memory benchmarks.

The child prints ``{"time": seconds}`` as JSON on stdout; its peak is its ``ru_maxrss``. A child
whose resident memory passes the cap is killed and reported as skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(argv: list[str], cap_gib: float) -> dict:
    """Runs ``argv``: ``{'peak_mib', 'time', 'note'}`` (and ``'err'``, its last error line, if
    it failed)."""
    cap_kib = int(cap_gib * 2**20)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        over_cap = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if rss_kib(proc.pid) > cap_kib:
                over_cap = True
                proc.kill()
            time.sleep(0.02)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        peak = usage.ru_maxrss / 1024
        if code != 0 or over_cap:
            why = f"over {cap_gib:g} GiB" if over_cap else f"exit {code}"
            tail = err.read().strip().splitlines()[-1:] if code > 0 else []
            return {"peak_mib": peak, "time": None, "note": f"OOM/skipped ({why})", "err": tail}
        return {"peak_mib": peak, "time": json.loads(out.read())["time"], "note": ""}
