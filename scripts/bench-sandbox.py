#!/usr/bin/env python3
"""Per-step cost of the sandbox, as root: start genoci's helper
(`genoci __sandbox REQUEST`) directly N times for each kind of sandbox,
interleaved, on a busybox tree, and print the median and minimum wall time.

The overlay cases stack the busybox tree under 1, 10 and 150 layers (as
the overlay driver's work trees are) and run the step on the driver's
mount with host ids, or in the user namespace: the tree's mount taken
down, the helper mounting its own overlay over idmapped layers, and the
tree mounted again (volatile, its mark cleared), all inside the time.

usage: scripts/bench-sandbox.py GENOCI-BINARY [N] [SCRIPT]
"""
import ctypes, json, os, shutil, subprocess, sys, tempfile, time, statistics

BIN = os.path.abspath(sys.argv[1])
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


def request(network_none, userns, root=tree, layers=None, slirp=False):
    r = dict(root=root, argv=["/bin/sh", "-c", SCRIPT], env=[], workdir="/",
             isolate_network=network_none, confined=True, user=None, etc_binds=[],
             console=None, parent=os.getpid(), userns=userns, probe=False,
             slirp=slirp, probe_network=False)
    if layers:
        r["layers"] = layers
    return json.dumps(r).encode().hex()


libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Chain:
    """An overlay work tree of `depth` layers: busybox at the bottom, a
    small directory in each layer above, mounted (volatile) at `root`."""

    def __init__(self, depth):
        self.dir = os.path.join(tmp, f"c{depth}")
        self.lowers = [os.path.join(self.dir, "l", str(i)) for i in range(depth)]
        for i, lower in enumerate(self.lowers):
            if i == depth - 1:
                shutil.copytree(tree, lower, symlinks=True)
            else:
                os.makedirs(os.path.join(lower, "layers", str(i)))
        w = os.path.join(self.dir, "w")
        self.upper, self.work, self.root = (os.path.join(w, d) for d in ("upper", "work", "root"))
        for d in (self.upper, self.work, self.root):
            os.makedirs(d)
        self.layers = dict(lowers=self.lowers, upper=self.upper, work=self.work, volatile=True)
        self.mount()

    def mount(self):
        # Relative paths keep a 150-layer option string within a page.
        rel = lambda p: os.path.relpath(p, self.dir)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,metacopy=off,xino=off,index=on,nfs_export=off,volatile" % (
            ":".join(rel(p) for p in self.lowers), rel(self.upper), rel(self.work))
        os.chdir(self.dir)
        shutil.rmtree(os.path.join(self.work, "work/incompat/volatile"), ignore_errors=True)
        if libc.mount(b"overlay", self.root.encode(), b"overlay", 0, opts.encode()):
            sys.exit(f"mount overlay: {os.strerror(ctypes.get_errno())}")

    def umount(self):
        if libc.umount2(self.root.encode(), 0):
            sys.exit(f"umount: {os.strerror(ctypes.get_errno())}")
        # As the driver does after an orderly unmount (see `lend`).
        shutil.rmtree(os.path.join(self.work, "work/incompat/volatile"), ignore_errors=True)


chains = {depth: Chain(depth) for depth in (1, 10, 150)}
cases = {
    "network host, host ids (the fallback)": (request(False, False), None),
    "network host, user namespace + slirp4netns": (request(False, True, slirp=True), None),
    "network none, host ids": (request(True, False), None),
    "network none, user namespace": (request(True, True), None),
}
for depth, chain in chains.items():
    cases[f"overlay {depth} layers, host ids"] = (request(True, False, chain.root), None)
    cases[f"overlay {depth} layers, user namespace"] = (
        request(True, True, chain.root, chain.layers), chain)
times = {k: [] for k in cases}
null = os.open("/dev/null", os.O_WRONLY)
try:
    for _ in range(N):
        for name, (req, lent) in cases.items():
            start = time.perf_counter()
            if lent:
                lent.umount()
            # The helper reports setup failures on descriptor 3.
            p = subprocess.run([BIN, "__sandbox", req], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: os.dup2(null, 3))
            if lent:
                lent.mount()
            times[name].append((time.perf_counter() - start) * 1000)
            if p.returncode:
                sys.exit(f"{name}: exit {p.returncode}: {p.stderr[:300]!r}")
finally:
    for chain in chains.values():
        libc.umount2(chain.root.encode(), 2)  # MNT_DETACH
    os.chdir("/")
    subprocess.run(["rm", "-rf", tmp], check=True)
for name, t in times.items():
    print(f"{name}: median {statistics.median(t):.2f} ms, min {min(t):.2f} ms ({N} runs)")
