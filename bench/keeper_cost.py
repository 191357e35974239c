"""What a command service's keeper costs (README, Running an application: No orphans, ever):
its private memory, and the start from Popen to the program exec'd, against the former shim that
only exec'd the program (no process stayed). `python bench/keeper_cost.py [N]`; Linux only."""
import os
import statistics
import subprocess
import sys
import time

from servicefactory.supervise import _commands as c

OLD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)
libc.prctl(1, 9, 0, 0, 0)
os.execvp(sys.argv[1], sys.argv[1:])
"""
def rollup(pid):
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:", "Private_Dirty:"):
            out[parts[0][:-1]] = int(parts[1])
    return out
def new_one():
    lr, lw = os.pipe(); rr, rw = os.pipe()
    t = time.perf_counter()
    p = subprocess.Popen(c.argv(["sleep", "300"], None, lr, rw, 15, 5.0), pass_fds=(lr, rw), start_new_session=True)
    os.close(rw)
    data = os.read(rr, 100)
    took = time.perf_counter() - t
    prog = c.started(data.strip())
    mem = rollup(p.pid)
    os.close(lw); p.wait(); os.close(lr); os.close(rr)
    return took, mem
def old_one():
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", OLD, "sleep", "300"], start_new_session=True)
    while True:  # exec'd: /proc/pid/exe is sleep
        try:
            if os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"): break
        except OSError: pass
        time.sleep(0.0005)
    took = time.perf_counter() - t
    p.kill(); p.wait()
    return took
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
news, olds = [], []
for _ in range(N):  # interleaved: the load changes under both alike
    news.append(new_one()); olds.append(old_one())
nt = statistics.median(t for t, _ in news); ot = statistics.median(olds)
print(f"start (Popen -> program exec'd), median of {N}: keeper {nt*1000:.1f} ms, old exec shim {ot*1000:.1f} ms, ratio {nt/ot:.2f}")
mem = news[-1][1]
print(f"keeper memory: RSS {mem['Rss']/1024:.1f} MiB, PSS {mem['Pss']/1024:.1f} MiB, private dirty {mem['Private_Dirty']/1024:.1f} MiB")
print("load:", open("/proc/loadavg").read().split()[:3])
