#!/usr/bin/env python3
"""Per-step cost of the sandbox, as root: start genoci's helper
(`genoci __sandbox REQUEST`) directly N times for each kind of sandbox,
interleaved, on a busybox tree, and print the median and minimum wall time.

usage: scripts/bench-sandbox.py GENOCI-BINARY [N] [SCRIPT]
"""
import json, os, subprocess, sys, tempfile, time, statistics

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SCRIPT = sys.argv[3] if len(sys.argv) > 3 else "true"
here = os.path.dirname(os.path.abspath(__file__))
busybox = subprocess.run(["bash", os.path.join(here, "fixtures.sh"), "busybox"],
                         check=True, capture_output=True, text=True).stdout.strip()
tmp = tempfile.mkdtemp(prefix="genoci-bench-sandbox-")
tree = os.path.join(tmp, "tree")
os.mkdir(tree)
subprocess.run(["tar", "-xzf", busybox, "-C", tree], check=True)
for d in ("proc", "dev"):
    os.makedirs(os.path.join(tree, d), exist_ok=True)


def request(network_none, userns, slirp=False):
    r = dict(root=tree, argv=["/bin/sh", "-c", SCRIPT], env=[], workdir="/",
             isolate_network=network_none, confined=True, user=None, etc_binds=[],
             console=None, parent=os.getpid(), userns=userns, probe=False,
             slirp=slirp, probe_network=False)
    return json.dumps(r).encode().hex()


cases = {
    "network host, host ids (the fallback)": request(False, False),
    "network host, user namespace + slirp4netns": request(False, True, True),
    "network none, host ids": request(True, False),
    "network none, user namespace": request(True, True),
}
times = {k: [] for k in cases}
null = os.open("/dev/null", os.O_WRONLY)
for _ in range(N):
    for name, req in cases.items():
        start = time.perf_counter()
        # The helper reports setup failures on descriptor 3.
        p = subprocess.run([BIN, "__sandbox", req], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           preexec_fn=lambda: os.dup2(null, 3))
        times[name].append((time.perf_counter() - start) * 1000)
        if p.returncode:
            sys.exit(f"{name}: exit {p.returncode}: {p.stderr[:300]!r}")
subprocess.run(["rm", "-rf", tmp], check=True)
for name, t in times.items():
    print(f"{name}: median {statistics.median(t):.2f} ms, min {min(t):.2f} ms ({N} runs)")
