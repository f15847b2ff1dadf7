"""Run the benchmark cases: tether vs podman pull vs skopeo copy (the download floor) vs GNU tar extraction.

Every timed run starts from a cold store (except the warm and new-tag cases, whose stores are prepared
untimed by the same tool), after ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root; see the README: on these
VMs file creation right after a mass delete is several times slower until the cache is dropped), and the
tools alternate run by run.  The registry is reached over loopback or over an emulated WAN
(``--network wan``: benchmarks/wan.py), the same link for every tool.  Wall time and the peak RSS of the whole
process tree (sampled from /proc every 20 ms) are recorded; medians, min/max and ratios go to
``benchmarks/results/<time>.json`` (``<time>-wan.json``), with the link's parameters and measured check.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import corpus, wan

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
#: Seconds to wait after removing stores before timing anything: ext4 forgets freed inodes after 60 s
#: (RECENTCY_MIN), but runs on these VMs kept getting faster for about 2.5 minutes after a mass delete.
SETTLE_SECONDS = 180
#: A case starts only with this much free disk (one case at 5 runs writes up to ~20 GB of stores); with less,
#: the earlier cases' stores are removed first (and the case waits SETTLE_SECONDS).
MIN_FREE_BYTES = 25 * 10**9


def describe_code(repo: Path = REPO_ROOT) -> dict[str, Any] | None:
    """Which code a results file measured: the checkout's commit and the tracked files modified in its work
    tree (the timed processes import the work tree), or None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        modified = sorted(line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": modified}


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, RSS bytes) of ``pid`` from /proc/PID/stat, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(b")") + 2:].split()
    return int(rest[1]), int(rest[21]) * _PAGE


class TreeSampler:
    """Summed RSS of a process and all its descendants, sampled cheaply.

    The sampler runs beside the measured command on the same two cores, so its own CPU counts against
    the tool that uses both: reading every /proc/PID/stat of the machine each 20 ms cost ~1.2 ms a sample
    (6% of a core).  A child's pid is higher than its parent's until pids wrap, so each sample reads only
    the pids at or above the root's and those already known; a full scan every 25th sample covers a wrap.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.members = {root}
        self.samples = 0

    def sample(self) -> int:
        self.samples += 1
        full = self.samples % 25 == 0
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
        candidates = pids if full else [p for p in pids if p >= self.root or p in self.members]
        info = {p: got for p in candidates if (got := _stat(p)) is not None}
        members = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, (parent, _) in info.items():
                if parent in members and pid not in members:
                    members.add(pid)
                    changed = True
        self.members = members
        return sum(info[p][1] for p in members if p in info)


@dataclass
class Measurement:
    seconds: float
    peak_rss: int
    returncode: int
    #: Bytes the registry side of the WAN link sent during the run (None on loopback).
    registry_sent: int | None = None
    #: CPU-seconds of the command's process tree, and of everything else on the machine meanwhile (the
    #: registry, the delay proxy, this process's RSS sampler and the kernel's writeback of the tool's files
    #: included: at the WAN's full rate the proxy takes 3% of a core, the registry 2%, the sampler about 6%).
    cpu_seconds: float | None = None
    others_cpu_seconds: float | None = None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot, all cores (/proc/stat: every state but idle and
    iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def children_cpu_seconds() -> float:
    """User + system CPU-seconds of this process's waited-for descendants, their own descendants included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(argv: Sequence[str], *, env: dict[str, str] | None = None, shell: bool = False) -> Measurement:
    """Run a command, timing it and sampling its process tree's RSS; also the CPU it used and the CPU the rest
    of the machine used meanwhile (other engineers' work on a shared VM shows there, as noise to discount)."""
    busy_before, children_before = busy_cpu_seconds(), children_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.Popen(argv if not shell else argv[0], shell=shell, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    sampler_state = TreeSampler(proc.pid)

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(Exception):
                peak = max(peak, sampler_state.sample())
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    cpu = children_cpu_seconds() - children_before
    others = max(0.0, busy_cpu_seconds() - busy_before - cpu)
    if proc.returncode != 0:
        print(f"  ! {' '.join(argv)[:200]} exited {proc.returncode}: {stderr.decode(errors='replace')[-800:]}",
              file=sys.stderr)
    return Measurement(seconds, peak, proc.returncode, cpu_seconds=cpu, others_cpu_seconds=others)


@dataclass
class Env:
    work: Path
    link: wan.Link
    layout: Path
    registries_conf: Path
    env: dict[str, str]
    driver: str = "overlay"
    #: Drop the page cache before every timed run (the benchmark always does; its tests do not).
    drop_page_cache: bool = True
    tether: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tether"])
    case: str = ""
    #: Another build of tether timed beside this one (``--baseline``): its command and environment.
    baseline: list[str] | None = None
    baseline_env: dict[str, str] | None = None

    @property
    def host(self) -> str:
        """The registry as every tool names it: through the link."""
        return self.link.host

    def timed(self, argv: Sequence[str], *, env: dict[str, str], shell: bool = False) -> Measurement:
        """One timed run: drop the page cache first (start-up with a cold cache is what an upgrade sees), and
        count the bytes the registry sent over the link meanwhile."""
        if self.drop_page_cache:
            drop_caches()
        before = self.link.registry_sent_bytes()
        measured = run_measured(argv, env=env, shell=shell)
        after = self.link.registry_sent_bytes()
        if before is not None and after is not None:
            measured.registry_sent = after - before
        return measured

    def tether_builds(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """The tether builds to time: this checkout, and the baseline checkout when one is given."""
        builds = {"tether": (self.tether, self.env)}
        if self.baseline is not None and self.baseline_env is not None:
            builds["baseline"] = (self.baseline, self.baseline_env)
        return builds

    def clear_stores(self, *, settle: bool = True) -> None:
        """Remove every store and run root of earlier runs; then (``settle``) wait until ext4 no longer
        treats their inodes as recently deleted.

        On these VMs' ext4 (no journal) the inode allocator skips inodes freed less than 60 s ago whose
        inode-table block is cached (fs/ext4/ialloc.c ``recently_deleted``, ``RECENTCY_MIN``), re-checking
        them on every allocation: creating a tree right after deleting one is slower the more was deleted,
        for every tool (podman 14-15 s with one store removed just before, 18 s with three; the GNU tar
        floor 4.2 s and 5.1 s), and runs were still slower for a minute or two after a mass delete (the
        first runs of a case after a 61 s wait: tether 5.9 s, then 5.0, 5.3, 4.2, 3.9; podman 16.0 s, then
        15.1, 13.9, 12.6, 12.9).  So nothing is deleted while the benchmark runs: each run writes a store of
        its own, kept until the end (about 45 GB for all cases at 5 runs), unless the disk runs short.
        """
        stores, runroots = self.work / "stores", self.runroots()
        stamp = self.work / "stores-removed-at"
        old = [*(stores.iterdir() if stores.is_dir() else ()), *(runroots.iterdir() if runroots.is_dir() else ())]
        for path in old:
            # podman may leave its store's overlay directory bind-mounted on itself
            subprocess.run(["umount", str(path / "overlay")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            subprocess.run(["rm", "-rf", str(path)], check=True)
        with contextlib.suppress(OSError):
            runroots.rmdir()
        if old:
            os.sync()
            stamp.write_text(f"{time.time()}\n")
        if settle:
            try:
                since = time.time() - float(stamp.read_text())
            except (OSError, ValueError):
                since = SETTLE_SECONDS
            if since < SETTLE_SECONDS:  # this run's removal, or the end of a benchmark run just before
                print(f"  (stores removed {since:.0f} s ago: waiting {SETTLE_SECONDS - since:.0f} s more)",
                      file=sys.stderr)
                time.sleep(SETTLE_SECONDS - since)

    def runroots(self) -> Path:
        """Where this work directory's run roots go: podman refuses a run root longer than 50 characters, so
        under /tmp, in a directory named after the work directory (runs with another --work keep theirs)."""
        tag = hashlib.sha256(str(self.work.resolve()).encode()).hexdigest()[:8]
        return Path("/tmp") / f"tbench-{tag}"

    def fresh(self, name: str) -> tuple[Path, Path]:
        """A new empty store root + run root for one run of the current case (``name`` unique within it)."""
        root = self.work / "stores" / f"{self.case}-{name}"
        runroot = self.runroots() / f"{self.case[:8]}-{name}"
        root.mkdir(parents=True)  # new: removing an old one here would be the delete clear_stores avoids
        runroot.mkdir(parents=True)
        return root, runroot

    def tether_pull(self, root: Path, runroot: Path, refs: Sequence[str], *extra: str,
                    command: Sequence[str] | None = None) -> list[str]:
        return [*(command or self.tether), "pull", "--root", str(root), "--runroot", str(runroot), "--storage-driver",
                self.driver, "--registries-conf", str(self.registries_conf), "--tls-verify=false",
                "--progress", "none", "--quiet", *extra, *[f"{self.host}/{r}" for r in refs]]

    def podman(self, root: Path, runroot: Path) -> list[str]:
        return ["podman", "--root", str(root), "--runroot", str(runroot), "--storage-driver", self.driver]

    def podman_pulls(self, root: Path, runroot: Path, refs: Sequence[str]) -> str:
        base = " ".join(self.podman(root, runroot))
        return " && ".join(f"{base} pull -q --tls-verify=false {self.host}/{r}" for r in refs)

    def skopeo_copies(self, layout: Path, refs: Sequence[str]) -> str:
        """skopeo copies of ``refs`` one after another into one OCI layout (blobs it holds are not fetched
        again: containers/image's OCI destination reuses a blob whose file exists)."""
        return " && ".join(f"skopeo copy -q --src-tls-verify=false docker://{self.host}/{r} "
                           f"oci:{layout}:{r.replace('/', '-').replace(':', '-')}" for r in refs)


Runner = Callable[[Env, int], Measurement]


TetherRun = Callable[[Env, int, str, list[str], dict[str, str]], Measurement]


def tether_runner(build: str, run: TetherRun) -> Runner:
    """A runner for one tether build (``tether`` or ``baseline``; see :meth:`Env.tether_builds`)."""

    def runner(env: Env, rep: int) -> Measurement:
        command, environ = env.tether_builds()[build]
        return run(env, rep, build, command, environ)

    return runner


def case_cold(refs: Sequence[str]) -> dict[str, Runner]:
    """Cold store: tether (all at once), podman and skopeo (one after another), GNU tar extraction."""

    def tether(env: Env, rep: int, build: str, command: list[str], environ: dict[str, str]) -> Measurement:
        root, runroot = env.fresh(f"{build}-{rep}")
        return env.timed(env.tether_pull(root, runroot, refs, command=command), env=environ)

    def podman(env: Env, rep: int) -> Measurement:
        root, runroot = env.fresh(f"podman-{rep}")
        return env.timed([env.podman_pulls(root, runroot, refs)], env=env.env, shell=True)

    def skopeo(env: Env, rep: int) -> Measurement:
        root, _ = env.fresh(f"skopeo-{rep}")
        return env.timed([env.skopeo_copies(root / "layout", refs)], env=env.env, shell=True)

    def tar_floor(env: Env, rep: int) -> Measurement:
        root, _ = env.fresh(f"tar-floor-{rep}")
        blobs: list[Path] = []
        for ref in refs:
            for blob in corpus.layer_blobs(env.layout, ref):
                if blob not in blobs:
                    blobs.append(blob)
        script = []
        for n, blob in enumerate(blobs):
            target = root / f"l{n}"
            target.mkdir()
            script.append(f"({sys.executable} -m isal.igzip -d -c {blob} | tar -x --numeric-owner -C {target}) &")
        script.append("wait")
        return env.timed(["\n".join(script)], env=env.env, shell=True)

    return {"tether": tether_runner("tether", tether), "baseline": tether_runner("baseline", tether),
            "podman": podman, "skopeo": skopeo, "tar-floor": tar_floor}


def case_prepared(prepare_refs: Sequence[str], refs: Sequence[str], *, tether_extra: Sequence[str] = ()
                  ) -> dict[str, Runner]:
    """The store already holds ``prepare_refs`` (pulled untimed by the same tool, over the same link); time
    pulling ``refs``.  skopeo's floor: an OCI layout that holds ``prepare_refs``, copied into again."""

    def tether(env: Env, rep: int, build: str, command: list[str], environ: dict[str, str]) -> Measurement:
        root, runroot = env.fresh(f"{build}-{rep}")
        prep = run_measured(env.tether_pull(root, runroot, prepare_refs, command=command), env=environ)
        assert prep.returncode == 0, "preparing the tether store failed"
        return env.timed(env.tether_pull(root, runroot, refs, *tether_extra, command=command), env=environ)

    def podman(env: Env, rep: int) -> Measurement:
        root, runroot = env.fresh(f"podman-{rep}")
        prep = run_measured([env.podman_pulls(root, runroot, prepare_refs)], env=env.env, shell=True)
        assert prep.returncode == 0, "preparing the podman store failed"
        return env.timed([env.podman_pulls(root, runroot, refs)], env=env.env, shell=True)

    def skopeo(env: Env, rep: int) -> Measurement:
        root, _ = env.fresh(f"skopeo-{rep}")
        prep = run_measured([env.skopeo_copies(root / "layout", prepare_refs)], env=env.env, shell=True)
        assert prep.returncode == 0, "preparing the skopeo layout failed"
        return env.timed([env.skopeo_copies(root / "layout", refs)], env=env.env, shell=True)

    return {"tether": tether_runner("tether", tether), "baseline": tether_runner("baseline", tether),
            "podman": podman, "skopeo": skopeo}


CASES: dict[str, Callable[[], dict[str, Runner]]] = {
    "cold-single": lambda: case_cold(["bench/big:v1"]),
    "cold-five": lambda: case_cold([f"bench/five-{n}:v1" for n in range(5)]),
    "warm-ten": lambda: case_prepared(list(corpus.TEN), list(corpus.TEN)),
    "new-tag": lambda: case_prepared(["bench/big:v1"], ["bench/big:v2"]),
    "five-tiny": lambda: case_cold(corpus.TINY),
}
#: Tools that do not use the network: timed on loopback only (their figure is the same over any link).
LOCAL_TOOLS = ("tar-floor",)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_case(runs: dict[str, list[Measurement]]) -> dict[str, Any]:
    """A case's results entry: per tool the run times, failures, median/min/max of the successful runs, peak
    RSS (and on a WAN the bytes the registry sent per run); ratios of tether's median to the others'."""
    summary: dict[str, Any] = {}
    for tool, ms in runs.items():
        ok = [m for m in ms if m.returncode == 0]
        summary[tool] = {
            "runs_s": [round(m.seconds, 3) for m in ms],
            "failed_runs": len(ms) - len(ok),
            **{k: round(v, 3) for k, v in summarize([m.seconds for m in (ok or ms)]).items()},
            "peak_rss_mb": round(max(m.peak_rss for m in ms) / 1e6, 1),
        }
        if any(m.registry_sent is not None for m in ms):
            summary[tool]["registry_sent_bytes"] = [m.registry_sent for m in ms]
        if all(m.cpu_seconds is not None and m.others_cpu_seconds is not None for m in ms):
            summary[tool]["cpu_s"] = [round(m.cpu_seconds or 0.0, 3) for m in ms]
            summary[tool]["others_cpu_s"] = [round(m.others_cpu_seconds or 0.0, 3) for m in ms]
    ratios = {}
    t = summary["tether"]["median"]
    for other in ("podman", "skopeo", "tar-floor", "baseline"):
        if other in summary and summary[other]["median"] > 0:
            ratios[f"tether/{other}"] = round(t / summary[other]["median"], 3)
    return {"tools": summary, "ratios": ratios}


def run_cases(env: Env, cases: Sequence[str], reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for case in cases:
        tools = CASES[case]()
        if env.baseline is None:
            tools.pop("baseline", None)
        if env.link.network != "loopback":
            for tool in LOCAL_TOOLS:
                tools.pop(tool, None)
        runs: dict[str, list[Measurement]] = {tool: [] for tool in tools}
        print(f"== {case} ({env.link.network})", file=sys.stderr)
        env.case = case
        if shutil.disk_usage(env.work).free < MIN_FREE_BYTES:
            env.clear_stores()
        names = list(tools)
        for rep in range(reps):
            # Each tool takes each place in the order in turn (the disk fills as a case goes on).
            order = names[rep % len(names):] + names[:rep % len(names)]
            for tool in order:
                m = tools[tool](env, rep)
                runs[tool].append(m)
                sent = "" if m.registry_sent is None else f"  registry sent {m.registry_sent / 1e6:8.1f} MB"
                load = f"  others {(m.others_cpu_seconds or 0.0) / max(m.seconds, 1e-3):4.2f} cores"
                print(f"  {tool:9s} run {rep + 1}: {m.seconds:7.2f} s  peak RSS {m.peak_rss / 1e6:7.1f} MB{sent}{load}"
                      f"{'' if m.returncode == 0 else '  FAILED'}", file=sys.stderr)
        results[case] = summarize_case(runs)
        print(f"  -> {json.dumps(results[case]['ratios'])}", file=sys.stderr)
    return results


def baseline_build(checkout: Path, environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """How to run another checkout's tether with this interpreter: ``-m tether`` from its tree, or ``-m engine``
    for a checkout from before the single ``tether`` namespace (its packages were top-level)."""
    env = {**environ, "PYTHONPATH": str(checkout), "PYTHONPYCACHEPREFIX": f"{environ['PYTHONPYCACHEPREFIX']}-baseline"}
    if (checkout / "engine" / "api" / "__main__.py").exists():
        # A namespace checkout is importable only through its package-dir mapping: a symlink tree does it.
        tree = checkout / ".bench-tree"
        (tree / "tether").mkdir(parents=True, exist_ok=True)
        for link, target in (("__init__.py", "engine/api/__init__.py"), ("__main__.py", "engine/api/__main__.py"),
                             ("engine", "engine"), ("registry", "registry"), ("store", "store")):
            path = tree / "tether" / link
            if not path.is_symlink():
                path.symlink_to(checkout / target)
        env["PYTHONPATH"] = str(tree)
        return [sys.executable, "-m", "tether"], env
    return [sys.executable, "-m", "engine"], env


def tool_environment(work: Path, registries_conf: Path) -> dict[str, str]:
    """The environment of every timed tool: registries.conf and an empty auth file of the work directory, and
    this checkout's tether with its bytecode cached."""
    (work / "auth.json").write_text('{"auths": {}}')
    env_vars = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
                "REGISTRY_AUTH_FILE": str(work / "auth.json"), "PYTHONPATH": str(REPO_ROOT),
                # An installed tether has its bytecode compiled; a checkout run with
                # PYTHONDONTWRITEBYTECODE=1 would recompile every module on every run.
                "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    env_vars.pop("PYTHONDONTWRITEBYTECODE", None)
    return env_vars


def write_registries_conf(path: Path, host: str) -> None:
    """The registry over plain HTTP, as every tool reaches it."""
    path.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')


def _wan_spec(text: str) -> tuple[float, float]:
    rate, _, rtt = text.partition(",")
    try:
        values = float(rate), float(rtt)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RATE_MBIT,RTT_MS (e.g. 200,40), got {text!r}") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"rate and RTT must be positive, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="tether vs podman pull vs skopeo on a local docker-registry, "
                                                 "over loopback or an emulated WAN")
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"cases to run (default: all of {', '.join(CASES)})")
    parser.add_argument("--reps", type=int, default=5, help="runs per tool and case (default 5: runs vary by ±10%%)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/tether-bench"),
                        help="corpus, registry data and stores (default /var/tmp/tether-bench)")
    parser.add_argument("--driver", choices=("overlay", "vfs"), default="overlay")
    parser.add_argument("--network", choices=("loopback", "wan"), default="loopback",
                        help="reach the registry over loopback, or over an emulated WAN (root: a network namespace "
                             "behind tbf and a delay proxy; see benchmarks/README.md)")
    parser.add_argument("--wan", type=_wan_spec, default=(200.0, 40.0), metavar="RATE_MBIT,RTT_MS",
                        help="the WAN's rate (each direction) and round-trip time (default 200,40)")
    parser.add_argument("--wan-plain-delay", action="store_true",
                        help="the delay proxy only delays bytes: no handshake round trip, no slow start")
    parser.add_argument("--output", type=Path, default=None,
                        help="results file (default benchmarks/results/<time>.json, <time>-wan.json)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="CHECKOUT",
                        help="also time the tether of another checkout (a git worktree of an earlier commit, run "
                             "with this interpreter): ratios tether/baseline in the same run")
    args = parser.parse_args(argv)
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.cases = args.cases or list(CASES)
    if args.network == "wan" and os.geteuid() != 0:
        parser.error("--network wan needs root (network namespace, veth pair, tc)")

    sys.path.insert(0, str(REPO_ROOT))
    from tests.harness.registry import start_registry

    wan.exit_on_sigterm()
    work = corpus.ensure_dir(args.work)
    if not drop_caches():
        print("warning: cannot drop the page cache (not root): figures will be noisy", file=sys.stderr)
    print("building the corpus (cached after the first run)...", file=sys.stderr)
    layout = corpus.build_layout(work)
    with contextlib.ExitStack() as stack:
        registry = start_registry(work / "registry")
        stack.callback(registry.stop)
        conf = work / "registries.conf"
        env_vars = tool_environment(work, conf)
        corpus.push_corpus(layout, registry.host, env=env_vars)
        if args.network == "wan":
            registry.stop()  # pushed over loopback; the tools reach the same data through the link
            spec = wan.WanSpec(rate_mbit=args.wan[0], rtt_ms=args.wan[1], connect_rtt=not args.wan_plain_delay,
                               slow_start=not args.wan_plain_delay)
            print(f"setting up the WAN link ({spec.rate_mbit:g} Mbit/s, {spec.rtt_ms:g} ms RTT)...", file=sys.stderr)
            link = stack.enter_context(wan.wan_link(spec, workdir=work / "registry-wan",
                                                    registry_data=registry.data_dir))
        else:
            link = wan.Link("loopback", registry.host)
        write_registries_conf(conf, link.host)
        blob = max(corpus.layer_blobs(layout, "bench/big:v1"), key=lambda b: b.stat().st_size)
        link.calibration = wan.calibrate(link.host, "bench/big", blob)
        print(f"link check: {json.dumps(link.calibration)}", file=sys.stderr)
        env = Env(work=work, link=link, layout=layout, registries_conf=conf, env=env_vars, driver=args.driver)
        if args.baseline is not None:
            env.baseline, env.baseline_env = baseline_build(args.baseline.resolve(), env_vars)
        env.clear_stores()  # leftovers of an interrupted run
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        code = describe_code()
        results = run_cases(env, args.cases, args.reps)
        env.clear_stores(settle=False)
    doc = {
        "started": started,
        "code": code,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)},
        "driver": args.driver,
        "reps": args.reps,
        "network": link.network,
        "link": link.describe(),
        "corpus": corpus.corpus_summary(layout),
        "cases": results,
        "baseline": describe_code(args.baseline) if args.baseline is not None else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if link.network == "loopback" else f"-{link.network}"
    out = args.output or RESULTS / f"{started.replace(':', '')}{suffix}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {out}", file=sys.stderr)
    print(json.dumps({case: r["ratios"] for case, r in results.items()}, indent=2))
    return 0
