"""Layer extraction throughput: tether's LayerExtractor (in process and in a child process) against
ISA-L gunzip piped into GNU tar, on the same gzip layers.

    python -m benchmarks.extract_bench [--dir /dev/shm/xb] [--runs 3] [--small-src /usr/lib/python3.11 ...]

Two corpora: (a) many small files (GNU tar of system directories), (b) a few large files.  Reports the
median wall time, entries/s and uncompressed MB/s; then two layers extracted at once (both cores).
Extraction targets are removed between runs; on disks with the inode-allocation trap (see
shared/reference/performance-notes.md) point ``--dir`` at a tmpfs to measure the code, not the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tether.store.tar.apply import LayerExtractor
from tether.store.tar.workers import ProcessLayerExtractor

CHUNK = 256 * 1024


def build_small(work: Path, sources: list[str]) -> Path:
    tar = work / "small.tar"
    subprocess.run(["tar", "-C", "/", "-cf", str(tar), *[s.lstrip("/") for s in sources]],
                   check=True, stderr=subprocess.DEVNULL)
    return tar


def build_large(work: Path, *, files: int = 4, size: int = 64 << 20) -> Path:
    src = work / "large-src"
    src.mkdir()
    block = hashlib.sha512(b"seed").digest() * 2048  # 128 KiB, half-compressible when repeated with noise
    for i in range(files):
        with open(src / f"big{i}.bin", "wb") as f:
            written = 0
            n = 0
            while written < size:
                f.write(block[: 64 * 1024] + os.urandom(64 * 1024))
                written += 128 * 1024
                n += 1
    tar = work / "large.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(tar), "."], check=True)
    shutil.rmtree(src)
    return tar


def gzip_file(tar: Path) -> Path:
    gz = tar.with_suffix(".tar.gz")
    with open(gz, "wb") as out:
        subprocess.run(["pigz", "-6", "-c", str(tar)], check=True, stdout=out)
    return gz


def count_entries(tar: Path) -> int:
    out = subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True).stdout
    return out.count(b"\n")


def run_tether(blob: Path, target: Path, cls: type) -> None:
    target.mkdir()
    x = cls(target, mode="overlay", tar_split_path=target.with_suffix(".tar-split.gz"))
    with open(blob, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            x.feed(chunk)
    x.finish()


def run_gnu(blob: Path, target: Path) -> None:
    target.mkdir()
    gunzip = subprocess.Popen([sys.executable, "-m", "isal.igzip", "-d", "-c", str(blob)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", str(target)], stdin=gunzip.stdout, check=True)
    assert gunzip.stdout is not None
    gunzip.stdout.close()
    gunzip.wait()


def _live_children_cpu() -> float:
    """CPU seconds of our still-running children (tether's pooled extraction workers are never waited for,
    so RUSAGE_CHILDREN does not see them)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in kids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu()


def timed(fn: Callable[[], None], cleanup: Callable[[], None], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, its threads and its waited-for children)."""
    times = []
    cpus = []
    for _ in range(runs):
        cleanup()
        subprocess.run(["sync"], check=False)
        t = time.perf_counter()
        c = _cpu()
        fn()
        times.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
    cleanup()
    return statistics.median(times), statistics.median(cpus)


def bench_corpus(work: Path, name: str, tar: Path, runs: int) -> None:
    entries = count_entries(tar)
    size = tar.stat().st_size
    gz = gzip_file(tar)
    print(f"\n[{name}] {entries} entries, {size / 1e6:.1f} MB tar, {gz.stat().st_size / 1e6:.1f} MB gzip")
    out = work / "out"
    outs = [work / "out-a", work / "out-b"]

    def cleanup() -> None:
        for extra in work.glob("out*"):
            if extra.is_dir():
                shutil.rmtree(extra, ignore_errors=True)
            else:
                extra.unlink()

    def two(fn: Callable[[Path], None]) -> Callable[[], None]:
        def go() -> None:
            threads = [threading.Thread(target=fn, args=(o,)) for o in outs]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        return go

    variants: dict[str, Callable[[], None]] = {
        "tether in-process": lambda: run_tether(gz, out, LayerExtractor),
        "tether child-process": lambda: run_tether(gz, out, ProcessLayerExtractor),
        "isal igzip | GNU tar": lambda: run_gnu(gz, out),
    }
    for label, fn in variants.items():
        t, cpu = timed(fn, cleanup, runs)
        print(f"  {label:26s} {t:7.3f} s wall {cpu:7.3f} s cpu  {entries / t:9.0f} entries/s"
              f"  {size / t / 1e6:7.1f} MB/s  ({cpu / max(entries, 1) * 1e6:6.1f} us cpu/entry)")
    pairs: dict[str, Callable[[], None]] = {
        "2 layers, tether threads": two(lambda o: run_tether(gz, o, LayerExtractor)),
        "2 layers, tether children": two(lambda o: run_tether(gz, o, ProcessLayerExtractor)),
        "2 layers, isal | GNU tar": two(lambda o: run_gnu(gz, o)),
    }
    for label, fn in pairs.items():
        t, cpu = timed(fn, cleanup, runs)
        print(f"  {label:26s} {t:7.3f} s wall {cpu:7.3f} s cpu  {2 * entries / t:9.0f} entries/s"
              f"  {2 * size / t / 1e6:7.1f} MB/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--large-mb", type=int, default=64, help="size of each of the 4 large files")
    p.add_argument("--small-src", nargs="*", default=["/usr/lib/python3.11", "/usr/lib/python3/dist-packages",
                                                       "/usr/share/doc"])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xbench-", dir=args.dir))
    try:
        corpora = {"small": build_small(work, args.small_src), "large": build_large(work, size=args.large_mb << 20)}
        for name, tar in corpora.items():
            bench_corpus(work, name, tar, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
