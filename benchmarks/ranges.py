"""Does one connection limit a large blob on the WAN profile?  (issue 14, item 4: parallel ranged downloads)

containerd fetches a large layer as parallel ``Range`` requests and measured about 2x where one TCP connection
cannot fill a link with a high bandwidth-delay product.  Before building that into tether, this measures what
it could buy here: the benchmark's largest blob fetched by curl over the emulated WAN (:mod:`benchmarks.wan`)
as one request, and as 2 and 4 ranges at once, alternating, with the link's goodput limit beside.  Root only.

Run: ``python -m benchmarks.ranges [--reps N] [--wan RATE_MBIT,RTT_MS]`` after ``python -m benchmarks``
has generated the corpus (it reads the registry data under ``--work``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.wan import WanSpec, exit_on_sigterm, wan_link

CONNECTIONS = (1, 2, 4)


def _largest_blob(registry_data: Path) -> tuple[str, str, Path]:
    """(repository, digest hex, data file) of the largest layer blob the registry holds."""
    root = registry_data / "docker" / "registry" / "v2"
    blobs = sorted((root / "blobs" / "sha256").glob("*/*/data"), key=lambda p: p.stat().st_size)
    if not blobs:
        raise SystemExit(f"no blobs under {root}: run python -m benchmarks first")
    data = blobs[-1]
    digest = data.parent.name
    for link in (root / "repositories").glob(f"**/_layers/sha256/{digest}/link"):
        return str(link.relative_to(root / "repositories")).split("/_layers/")[0], digest, data
    raise SystemExit(f"blob {digest} is in no repository's layers")


def _ranges(size: int, count: int) -> list[str]:
    step = size // count
    return [f"{i * step}-{size - 1 if i == count - 1 else (i + 1) * step - 1}" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranges", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/tether-bench"))
    parser.add_argument("--wan", default="200,40", metavar="RATE_MBIT,RTT_MS")
    args = parser.parse_args()
    rate, rtt = (float(v) for v in args.wan.split(","))
    spec = WanSpec(rate_mbit=rate, rtt_ms=rtt)
    registry_data = args.work / "registry" / "data"
    repository, digest, data = _largest_blob(registry_data)
    size = data.stat().st_size
    exit_on_sigterm()
    with wan_link(spec, workdir=args.work / "ranges", registry_data=registry_data) as link:
        url = f"http://{link.host}/v2/{repository}/blobs/sha256:{digest}"
        with open(data, "rb") as f:  # the registry's disk is not what is measured
            while f.read(1 << 22):
                pass
        rates: dict[int, list[float]] = {n: [] for n in CONNECTIONS}
        for rep in range(args.reps):
            for count in CONNECTIONS:
                start = time.perf_counter()
                procs = [subprocess.Popen(["curl", "-sS", "-f", "-o", "/dev/null", "-r", r, url])
                         for r in _ranges(size, count)]
                if any(p.wait() != 0 for p in procs):
                    raise SystemExit(f"curl failed on {url}")
                rates[count].append(size / (time.perf_counter() - start))
                print(f"run {rep + 1}: {count} connection(s): {rates[count][-1] / 1e6:.2f} MB/s", flush=True)
    limit = spec.goodput_limit()
    print(f"{size} bytes over {rate:g} Mbit/s, {rtt:g} ms RTT (goodput limit {limit / 1e6:.2f} MB/s):")
    for count, values in rates.items():
        median = statistics.median(values)
        print(f"  {count} connection(s): median {median / 1e6:.2f} MB/s = {median / limit:.1%} of the limit")


if __name__ == "__main__":
    main()
