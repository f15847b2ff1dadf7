"""Child process for :class:`tether.store.tar.workers.ProcessLayerExtractor`:
``python -m tether.store.tar._worker_main``.

Protocol, per layer (a worker serves several layers one after another): a frame holding the JSON object
``{"target_dir", "mode", "tar_split_path", "threaded", "space"}`` (``space``: a
:class:`~tether.store.diskspace.SpaceGuard`'s JSON, or null), then the raw (compressed or not) blob bytes as
frames (4-byte big-endian length, then the bytes), then a frame of length 0.  An EOF before that frame (the
parent died or aborted) fails the layer.  Each layer gets one JSON line on stdout: ``{"ok":
<ExtractResult.to_json()>}``, or ``{"error": <class name>, "message": ...}`` after which the worker exits with
status 1; EOF between layers ends it with status 0.  Runs with umask 0 (as containers/storage's applier does),
so created modes are exact without extra chmods.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tether.store.diskspace import SpaceGuard
from tether.store.errors import StoreError
from tether.store.tar.apply import LayerExtractor

_READ = 1024 * 1024


def _run_one(stdin: BinaryIO, out: TextIO, params: dict[str, Any]) -> bool:
    """One layer: data frames until the end frame; one JSON line out.  False when the layer failed."""
    try:
        # Threaded for the layers on the pull's critical path (the parent says which): decompressing and
        # hashing then run beside the applier, ~20% off a 54k-file layer on ext4.
        space = SpaceGuard.from_json(params["space"]) if params.get("space") else None
        extractor = LayerExtractor(Path(params["target_dir"]), mode=params["mode"],
                                   tar_split_path=Path(params["tar_split_path"]),
                                   threaded=bool(params.get("threaded", False)), space=space)
        try:
            while True:
                head = stdin.read(4)
                n = int.from_bytes(head, "big") if len(head) == 4 else -1
                if n == 0:
                    break  # the parent's finish()
                data = stdin.read(n) if n > 0 else b""
                if n < 0 or len(data) < n:
                    # EOF without the end frame: the parent died (kill -9) or aborted.  The blob may be cut
                    # anywhere, even on an entry boundary a tar reader accepts: never finish such a layer.
                    raise StoreError("the process feeding the layer stopped before the end of the blob")
                extractor.feed(data)
            result = extractor.finish()
        except BaseException:
            extractor.abort()
            raise
    except Exception as e:
        out.write(json.dumps({"error": type(e).__name__, "message": str(e),
                              "module": type(e).__module__}) + "\n")
        out.flush()
        return False
    out.write(json.dumps({"ok": result.to_json()}) + "\n")
    out.flush()
    return True


def main() -> int:
    """Serve layers one after another (the parent keeps idle workers for its next layers) until stdin
    closes between layers; exit 1 after a failed layer (the parent never reuses such a worker)."""
    os.umask(0)
    stdin = open(sys.stdin.fileno(), "rb", buffering=_READ, closefd=False)  # noqa: SIM115
    while True:
        head = stdin.read(4)
        if not head:
            return 0
        n = int.from_bytes(head, "big")
        raw = stdin.read(n) if len(head) == 4 else b""
        if len(head) < 4 or len(raw) < n:
            return 1
        if not _run_one(stdin, sys.stdout, json.loads(raw)):
            return 1


if __name__ == "__main__":
    sys.exit(main())
