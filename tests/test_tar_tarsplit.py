"""tether.store.tar.tarsplit: the format as vbatts/tar-split writes it, byte-exact reassembly, and agreement with the
tar-split files podman 4.3 (containers/storage 1.43) writes for the same layers."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images
from tests.harness.trees import diff_snapshots, snapshot
from tether.store.errors import HostileArchiveError
from tether.store.tar.apply import LayerExtractor
from tether.store.tar.tarsplit import (
    FILE_TYPE,
    SEGMENT_TYPE,
    TarSplitError,
    TarSplitWriter,
    assemble_tar,
    crc64_iso,
    read_tar_split,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="layer application needs root")


def extract(blob: bytes, target: Path) -> Any:
    target.mkdir(parents=True)
    x = LayerExtractor(target, mode="overlay", tar_split_path=target.with_name(target.name + ".tar-split.gz"))
    for i in range(0, len(blob), 100_003):
        x.feed(blob[i : i + 100_003])
    return x.finish()


def rebuilt(target: Path) -> bytes:
    return b"".join(assemble_tar(target.with_name(target.name + ".tar-split.gz"), target))


def test_crc64_is_go_crc64_iso() -> None:
    # Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))
    assert crc64_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_iso(b"56789", crc64_iso(b"1234")) == crc64_iso(b"123456789")
    assert crc64_iso(b"") == 0


def test_writer_lines_are_what_tar_splits_packer_writes(tmp_path: Path) -> None:
    w = TarSplitWriter(tmp_path / "t.gz")
    w.add_segment(b"\x00\x01hdr")
    w.add_file(b"etc/passwd", 5, crc64_iso(b"hello"))
    w.add_file(b"empty", 0, None)
    w.add_file(b"latin1-\xe9", 1, crc64_iso(b"x"))
    w.add_file(b"a<b>&\"q\"\\\x01\t", 0, None)
    w.close()
    lines = gzip.decompress((tmp_path / "t.gz").read_bytes()).splitlines()
    crc = base64.b64encode(crc64_iso(b"hello").to_bytes(8, "big"))
    assert lines[0] == b'{"type":2,"payload":"' + base64.b64encode(b"\x00\x01hdr") + b'","position":0}'
    assert lines[1] == b'{"type":1,"name":"etc/passwd","size":5,"payload":"' + crc + b'","position":1}'
    assert lines[2] == b'{"type":1,"name":"empty","payload":null,"position":2}'
    assert lines[3].startswith(b'{"type":1,"name_raw":"' + base64.b64encode(b"latin1-\xe9") + b'","size":1,')
    assert lines[4] == (b'{"type":1,"name":"a\\u003cb\\u003e\\u0026\\"q\\"\\\\\\u0001\\t","payload":null,'
                        b'"position":4}')
    decoded = list(read_tar_split(tmp_path / "t.gz"))
    assert [(e.type, e.name, e.size) for e in decoded] == [
        (SEGMENT_TYPE, b"", 0), (FILE_TYPE, b"etc/passwd", 5), (FILE_TYPE, b"empty", 0),
        (FILE_TYPE, b"latin1-\xe9", 1), (FILE_TYPE, b"a<b>&\"q\"\\\x01\t", 0)]
    assert json.loads(lines[4])["name"] == 'a<b>&"q"\\\x01\t'


def test_writer_refuses_duplicate_cleaned_paths(tmp_path: Path) -> None:
    w = TarSplitWriter(tmp_path / "t.gz")
    w.add_file(b"./usr/bin/", 0, None)
    with pytest.raises(HostileArchiveError, match="duplicate"):
        w.add_file(b"usr/bin", 0, None)
    w.abort()
    assert not (tmp_path / "t.gz").exists()


def pax_layer_entries() -> list[images.Entry]:
    return [
        images.directory("usr"),
        images.directory("usr/share"),
        images.file("usr/share/" + "long-" * 40 + "name.txt", b"long name via PAX path"),
        images.file(b"usr/share/latin1-\xe9t\xe9.txt", b"non-utf8"),
        images.file("usr/share/\u00fcnic\u00f6de", b"utf8"),
        images.file("usr/share/html <&>", b"escaped"),
        images.symlink("usr/share/" + "l" * 120, "target/" + "t" * 120),
        images.file("usr/share/hard-src", b"hard"),
        images.hardlink("usr/share/hard-dst", "usr/share/hard-src"),
        images.file("usr/share/empty", b""),
        images.file("usr/share/odd", b"x" * 513, mode=0o4755, uid=1234, gid=5678),
        images.Entry("usr/share/cap", "file", b"cap", 0o755,
                     xattrs={"security.capability": bytes.fromhex("0100000200200000000000000000000000000000"),
                             "user.x": b"\xff\x00y"}),
        images.fifo("usr/share/fifo"),
        images.char_device("usr/share/null", 1, 3),
    ]


@needs_root
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_round_trip_reproduces_the_exact_tar(tmp_path: Path, compression: images.Compression, fmt: int) -> None:
    tar = images.build_tar(pax_layer_entries(), format=fmt)
    tar += b"\0" * 4096 + b"trailing bytes after the end-of-archive marker"
    blob = images.compress(tar, compression)
    result = extract(blob, tmp_path / "diff")
    assert result.diff_digest == images.sha256_digest(tar)
    out = rebuilt(tmp_path / "diff")
    assert hashlib.sha256(out).hexdigest() == result.diff_digest.split(":")[1]
    assert out == tar


@needs_root
def test_round_trip_of_gnu_tar_output_with_record_padding(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / ("b" * 150)).mkdir(parents=True)
    (src / "a" / ("b" * 150) / ("c" * 120)).write_bytes(b"gnu long names")
    os.symlink("x" * 200, src / "longlink")
    tar = subprocess.run(["tar", "--format=gnu", "-C", str(src), "-cf", "-", "."], check=True,
                         capture_output=True).stdout
    assert len(tar) % 10240 == 0  # GNU tar pads to its record size: bytes after the two zero blocks
    result = extract(gzip.compress(tar), tmp_path / "diff")
    assert result.diff_size == len(tar)
    assert rebuilt(tmp_path / "diff") == tar


@needs_root
def test_reassembly_detects_a_modified_file(tmp_path: Path) -> None:
    extract(images.build_tar([images.file("f", b"original")]), tmp_path / "diff")
    (tmp_path / "diff" / "f").write_bytes(b"tampered")
    with pytest.raises(TarSplitError, match="checksum"):
        rebuilt(tmp_path / "diff")
    (tmp_path / "diff" / "f").write_bytes(b"original plus appended bytes")
    with pytest.raises(TarSplitError, match="longer than the 8 bytes recorded"):
        rebuilt(tmp_path / "diff")
    (tmp_path / "diff" / "f").unlink()
    with pytest.raises(TarSplitError, match="cannot open"):
        rebuilt(tmp_path / "diff")


@needs_root
def test_reassembly_never_reads_through_symlinks_out_of_the_layer(tmp_path: Path) -> None:
    # A layer with "evil -> /etc" then "evil/hostname": the file lives at <diff>/etc/hostname (chroot semantics);
    # reading the tar back must read that file, never the host's /etc/hostname.
    tar = images.build_tar([images.directory("etc"), images.symlink("evil", "/etc"),
                            images.file("evil/hostname", b"layer's own")])
    extract(tar, tmp_path / "diff")
    assert (tmp_path / "diff" / "etc" / "hostname").read_bytes() == b"layer's own"
    assert rebuilt(tmp_path / "diff") == tar


# --- podman's own tar-split files ----------------------------------------------------------------


def rich_gnu_layer(tmp: Path) -> bytes:
    src = tmp / "gnusrc"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "conf").write_bytes(b"k=v\n" * 100)
    os.setxattr(src / "etc" / "conf", "user.note", b"n")
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(bytes(range(256)) * 9)
    os.chmod(src / "bin" / "tool", 0o2755)
    os.symlink("tool", src / "bin" / "alias")
    os.link(src / "bin" / "tool", src / "bin" / "tool-hard")
    (src / ("deep-" * 30)).mkdir()
    (src / ("deep-" * 30) / ("file-" * 30)).write_bytes(b"deep")
    os.chown(src / ("deep-" * 30), 42, 43)
    return subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(src), "-cf", "-",
         "."], check=True, capture_output=True).stdout


def strip_final_empty(entries: list[Any]) -> list[Any]:
    """tar-split's last read (0 bytes, EOF) may or may not add an empty segment, depending on whether Go's
    decompressor returned the final bytes together with EOF; it carries no bytes."""
    while entries and entries[-1].type == SEGMENT_TYPE and not entries[-1].payload:
        entries = entries[:-1]
    return entries


@needs_root
def test_agrees_with_podman_written_tar_split(tmp_path: Path, registry: Any, podman: Any) -> None:
    layers = [
        images.build_layer(rich_gnu_layer(tmp_path), "gzip"),
        images.build_layer([*pax_layer_entries(), images.whiteout("etc/conf"), images.opaque("bin")], "gzip"),
        images.build_layer([images.directory("usr"), *images.many_small_files("usr/many", 40),
                            images.file(b"usr/\xff\xfe-raw", b"raw")], "zstd"),
        images.build_layer(images.build_tar([images.file("plain", b"uncompressed layer")]), "none"),
    ]
    image = images.build_image(layers)
    repo = "tarsplit/podman-agreement"
    images.push_image(registry.host, f"{repo}:v1", image)
    podman.pull(f"{registry.host}/{repo}:v1")
    records = json.loads((podman.root / "overlay-layers" / "layers.json").read_bytes())
    by_digest = {r["compressed-diff-digest"]: r for r in records}
    assert len(records) == len(layers)
    for n, built in enumerate(layers):
        rec = by_digest[built.digest]
        podman_split = podman.root / "overlay-layers" / f"{rec['id']}.tar-split.gz"
        podman_diff = podman.root / "overlay" / rec["id"] / "diff"
        # 1. our reader rebuilds podman's layer exactly from podman's tar-split and diff directory
        theirs = b"".join(assemble_tar(podman_split, podman_diff))
        assert images.sha256_digest(theirs) == rec["diff-digest"] == built.diff_id
        # 2. our extraction of the same blob writes the same tar-split entries and the same figures
        ours_dir = tmp_path / f"ours{n}"
        result = extract(built.blob, ours_dir)
        assert result.diff_digest == rec["diff-digest"]
        assert result.diff_size == rec["diff-size"]
        assert list(result.uidset) == rec.get("uidset", [])
        assert list(result.gidset) == rec.get("gidset", [])
        assert {"none": 0, "gzip": 2, "zstd": 4}[result.compression] == rec.get("compression", 0)
        ours_split = ours_dir.with_name(ours_dir.name + ".tar-split.gz")
        ours_entries = strip_final_empty(list(read_tar_split(ours_split)))
        theirs_entries = strip_final_empty(list(read_tar_split(podman_split)))
        assert ours_entries == theirs_entries
        # byte-identical JSON lines, even (up to that final empty segment)
        ours_json = gzip.decompress(ours_split.read_bytes()).splitlines()
        theirs_json = gzip.decompress(podman_split.read_bytes()).splitlines()
        assert ours_json[: len(ours_entries)] == theirs_json[: len(theirs_entries)]
        # 3. the same tree (whiteout devices get the current time as mtime in both: not compared)
        a, b = snapshot(podman_diff), snapshot(ours_dir)
        for tree in (a, b):
            for info in tree.values():
                if info["type"] == stat.S_IFCHR and info.get("rdev") == (0, 0):
                    info.pop("mtime", None)
        assert diff_snapshots(a, b) == []
        assert rebuilt(ours_dir) == built.tar


def test_read_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b'{"type":1,"name":\n'))
    with pytest.raises(TarSplitError):
        list(read_tar_split(tmp_path / "bad.gz"))
    with pytest.raises(TarSplitError, match="missing"):
        list(read_tar_split(tmp_path / "absent.gz"))


@needs_root
def test_vfs_trees_agree_with_podman_vfs(tmp_path: Path, registry: Any) -> None:
    from tests.harness.podman import podman_for

    base = images.build_layer([
        images.directory("etc"), images.file("etc/keep", b"k"), images.file("etc/gone", b"g"),
        images.directory("etc/sub"), images.file("etc/sub/a", b"a"),
        images.directory("cache"), images.file("cache/old", b"o"), images.directory("cache/d"),
        images.file("cache/d/x", b"x"), images.symlink("lnk", "etc"), images.directory("usr/bin"),
        images.symlink("bin", "usr/bin"),
    ], "gzip")
    child = images.build_layer([
        images.whiteout("etc/gone"), images.whiteout("etc/sub"), images.directory("cache"),
        images.opaque("cache"), images.file("cache/new", b"n"), images.whiteout("lnk"),
        images.file("bin/tool", b"via symlinked dir"), images.file("etc/added", b"+"),
    ], "zstd")
    image = images.build_image([base, child])
    repo = "tarsplit/vfs-agreement"
    images.push_image(registry.host, f"{repo}:v1", image)
    pod = podman_for(tmp_path / "podman", "vfs")
    try:
        pod.pull(f"{registry.host}/{repo}:v1")
        records = {r["compressed-diff-digest"]: r for r in
                   json.loads((pod.root / "vfs-layers" / "layers.json").read_bytes())}
        for n, built in enumerate((base, child)):
            target = tmp_path / f"t{n}"
            if n:
                subprocess.run(["cp", "-a", str(tmp_path / "t0"), str(target)], check=True)
            else:
                target.mkdir()
            x = LayerExtractor(target, mode="vfs", tar_split_path=tmp_path / f"t{n}.tar-split.gz")
            x.feed(built.blob)
            result = x.finish()
            rec = records[built.digest]
            assert result.diff_digest == rec["diff-digest"]
            theirs = pod.root / "vfs" / "dir" / rec["id"]
            # (the root directory's own mode is the Store's business: 0555 for a base layer, as podman)
            assert diff_snapshots(snapshot(theirs), snapshot(target)) == []
            assert rebuilt(target) == built.tar
    finally:
        import shutil

        shutil.rmtree(pod.runroot, ignore_errors=True)


@needs_root
def test_layers_podman_builds_and_pushes_extract_identically(tmp_path: Path, registry: Any, podman: Any) -> None:
    """Layers written by Go's archive/tar (buildah's COPY, podman push) rather than by Python or GNU tar."""
    import httpx

    ctx = tmp_path / "ctx"
    (ctx / "etc" / "deep" / ("x" * 120)).mkdir(parents=True)
    (ctx / "etc" / "deep" / ("x" * 120) / ("long-" * 30)).write_bytes(b"long")
    (ctx / "bin").mkdir()
    (ctx / "bin" / "suid").write_bytes(b"\x7fELF" * 300)
    os.chmod(ctx / "bin" / "suid", 0o4755)
    os.link(ctx / "bin" / "suid", ctx / "bin" / "suid-hard")
    os.symlink("suid", ctx / "bin" / "alias")
    (ctx / os.fsdecode(b"raw-\xe9")).write_bytes(b"latin1")
    (ctx / "emptydir").mkdir()
    os.setxattr(ctx / "etc", "user.tag", b"v")
    (tmp_path / "Containerfile").write_text("FROM scratch\nCOPY . /\n")
    podman.run("build", "-q", "-t", "localhost/tarsplit-built:1", "-f", str(tmp_path / "Containerfile"), str(ctx))
    ref = f"{registry.host}/tarsplit/built:1"
    podman.run("push", "--tls-verify=false", "localhost/tarsplit-built:1", ref)
    base = f"http://{registry.host}/v2/tarsplit/built"
    with httpx.Client(timeout=60) as client:
        manifest = client.get(f"{base}/manifests/1", headers={"Accept": ", ".join([
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json"])}).json()
        blob = client.get(f"{base}/blobs/{manifest['layers'][0]['digest']}").content
    records = json.loads((podman.root / "overlay-layers" / "layers.json").read_bytes())
    assert len(records) == 1
    rec = records[0]
    podman_split = podman.root / "overlay-layers" / f"{rec['id']}.tar-split.gz"
    podman_diff = podman.root / "overlay" / rec["id"] / "diff"
    result = extract(blob, tmp_path / "ours")
    assert result.diff_digest == rec["diff-digest"]
    assert result.diff_size == rec["diff-size"]
    assert list(result.uidset) == rec.get("uidset", []) and list(result.gidset) == rec.get("gidset", [])
    ours_split = tmp_path / "ours.tar-split.gz"
    assert strip_final_empty(list(read_tar_split(ours_split))) == strip_final_empty(
        list(read_tar_split(podman_split)))
    assert diff_snapshots(snapshot(podman_diff), snapshot(tmp_path / "ours")) == []
    theirs = b"".join(assemble_tar(podman_split, podman_diff))
    assert images.sha256_digest(theirs) == rec["diff-digest"] == images.sha256_digest(rebuilt(tmp_path / "ours"))


@needs_root
def test_tars_without_end_marker_and_base256_numbers_round_trip(tmp_path: Path) -> None:
    big_ids = images.Entry("big-ids", "file", b"x", 0o644, uid=10_000_000, gid=3_000_000)
    gnu = images.build_tar([images.file("a", b"1"), big_ids], format=tarfile.GNU_FORMAT)
    assert b"\x80" in gnu[:2048]  # the ids needed GNU base-256 fields
    result = extract(gnu, tmp_path / "gnu")
    st = os.lstat(tmp_path / "gnu" / "big-ids")
    assert (st.st_uid, st.st_gid) == (10_000_000, 3_000_000)
    assert result.uidset == (0, 10_000_000)
    assert rebuilt(tmp_path / "gnu") == gnu
    # Go's reader (and so podman) accepts a stream that ends on an entry boundary or after one zero block.
    whole = images.build_tar([images.file("a", b"1" * 700)], format=tarfile.USTAR_FORMAT)
    for n, cut in enumerate((whole[: 512 + 1024], whole[: 512 + 1024 + 512])):
        result = extract(cut, tmp_path / f"cut{n}")
        assert result.diff_size == len(cut)
        assert rebuilt(tmp_path / f"cut{n}") == cut
