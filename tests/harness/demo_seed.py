"""Push the demo's images to a registry: ``python -m tests.harness.demo_seed HOST``.

Three small application images sharing a base layer (a few hundred files, a symlink, a hardlink; gzip and
zstd layers), so the demo shows shared layers fetched once. Prints one pushed reference per line.
Idempotent: pushing the same content again is a no-op for the registry.
"""

from __future__ import annotations

import sys
import zlib

from tests.harness import images as factory

DEMO_IMAGES = ("demo/web:1.0", "demo/db:15", "demo/worker:2")


def base_layer() -> factory.BuiltLayer:
    return factory.build_layer([
        factory.directory("etc"),
        factory.file("etc/os-release", 'NAME="tether demo base"\nID=tether-demo\n'),
        factory.directory("usr"),
        factory.directory("usr/bin"),
        factory.large_file("usr/bin/demo-tool", 2 * 1024 * 1024, seed=1),
        factory.hardlink("usr/bin/demo-tool-link", "usr/bin/demo-tool"),
        factory.symlink("usr/bin/demo", "demo-tool"),
        *factory.many_small_files("usr/share/demo", 400, size=300, seed=7),
        *factory.busybox_entries(),  # something podman can run from the store
    ])


def app_layer(name: str, compression: factory.Compression) -> factory.BuiltLayer:
    return factory.build_layer([
        factory.directory("app"),
        factory.file("app/NAME", f"{name}\n"),
        *factory.many_small_files(f"app/{name}", 50, size=500, seed=zlib.crc32(name.encode()) % 1000),
    ], compression)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.harness.demo_seed HOST:PORT", file=sys.stderr)
        return 2
    host = argv[0]
    base = base_layer()
    for n, ref in enumerate(DEMO_IMAGES):
        app = ref.split("/")[1].split(":")[0]
        image = factory.build_image([base, app_layer(app, "zstd" if n == 2 else "gzip")],
                                    labels={"org.example.demo": app}, cmd=["/bin/cat", "/app/NAME"])
        factory.push_image(host, ref, image)
        print(f"{host}/{ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
