"""Child process for :class:`store.tarapply.ProcessLayerExtractor`: ``python -m store._extract_worker``.

Protocol: argv[1] is a JSON object ``{"target_dir", "mode", "tar_split_path"}``; stdin carries the raw
(compressed or not) blob bytes as frames (4-byte big-endian length, then the bytes), ended by a frame of
length 0; an EOF before that frame (the parent died or aborted) fails the layer; on success one JSON
line ``{"ok": <ExtractResult.to_json()>}`` is written to stdout and the exit status is 0; on a refused
or failed layer ``{"error": <class name>, "message": ...}`` and exit status 1.  Runs with umask 0 (as
containers/storage's applier does), so created modes are exact without extra chmods.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from store.errors import StoreError
from store.tarapply import LayerExtractor

_READ = 1024 * 1024


def main(argv: list[str]) -> int:
    params = json.loads(argv[1])
    os.umask(0)
    out = sys.stdout
    try:
        extractor = LayerExtractor(Path(params["target_dir"]), mode=params["mode"],
                                   tar_split_path=Path(params["tar_split_path"]))
        stdin = open(sys.stdin.fileno(), "rb", buffering=_READ, closefd=False)  # noqa: SIM115
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
        return 1
    out.write(json.dumps({"ok": result.to_json()}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
