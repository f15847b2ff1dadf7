"""A hostile-tar corpus: every entry is confined (as containers/storage confines it: its applier runs in a
chroot of the layer directory) or refused, and nothing is ever written, linked or removed outside the layer."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from tests.harness.trees import snapshot
from tether.store.errors import HostileArchiveError, StoreError, UnsupportedError
from tether.store.tar.apply import LayerExtractor
from tether.store.tar.workers import ProcessLayerExtractor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer application needs root")


def member(name: str | bytes, *, type: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
           size: int | None = None, pax: dict[str, str] | None = None,
           fmt: Literal[0, 1, 2] = tarfile.PAX_FORMAT) -> bytes:
    info = tarfile.TarInfo(os.fsdecode(name) if isinstance(name, bytes) else name)
    info.type = type
    info.linkname = linkname
    info.size = len(data) if size is None else size
    info.mode = 0o644
    info.mtime = 1_700_000_000
    if pax:
        info.pax_headers = pax
    buf = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    if data:
        buf += data + b"\0" * (-len(data) % 512)
    return buf


END = b"\0" * 1024


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    target = tmp_path / "layer"
    target.mkdir()
    return {"outside": outside, "target": target, "tmp": tmp_path}


Runner = Callable[..., object]


@pytest.fixture(params=["in-process", "child-process"])
def apply(request: pytest.FixtureRequest, sandbox: dict[str, Path]) -> Runner:
    cls = LayerExtractor if request.param == "in-process" else ProcessLayerExtractor

    def run(tar: bytes, *, mode: str = "overlay") -> object:
        before_outside = snapshot(sandbox["outside"])
        before_tmp = sorted(os.listdir(sandbox["tmp"]))
        split = sandbox["tmp"] / "layer.tar-split.gz"
        x = (LayerExtractor(sandbox["target"], mode=mode, tar_split_path=split)  # type: ignore[arg-type]
             if cls is LayerExtractor else
             ProcessLayerExtractor(sandbox["target"], mode=mode, tar_split_path=split,  # type: ignore[arg-type]
                                   spawn_threshold=0))
        try:
            try:
                x.feed(tar)
                return x.finish()
            except BaseException:
                x.abort()
                raise
        finally:
            # whatever happened, nothing outside the layer changed
            assert snapshot(sandbox["outside"]) == before_outside
            assert (sandbox["outside"] / "victim").read_bytes() == b"precious"
            extra = set(os.listdir(sandbox["tmp"])) - set(before_tmp) - {"layer.tar-split.gz"}
            assert not extra, extra
            assert not os.path.lexists("/hostile-escape"), "wrote to the real root"

    return run


def test_absolute_names_are_confined(apply: Runner, sandbox: dict[str, Path]) -> None:
    apply(member("/hostile-escape", data=b"abs") + member(str(sandbox["outside"] / "victim"), data=b"x") + END)
    t = sandbox["target"]
    assert (t / "hostile-escape").read_bytes() == b"abs"
    assert (t / str(sandbox["outside"] / "victim").lstrip("/")).read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../hostile-escape", "a/../../hostile-escape", "./../../../hostile-escape",
                                  "/../hostile-escape"])
def test_dotdot_is_clamped_at_the_layer_root(apply: Runner, sandbox: dict[str, Path], name: str) -> None:
    apply(member(name, data=b"dotdot") + END)
    assert (sandbox["target"] / "hostile-escape").read_bytes() == b"dotdot"


def test_write_through_absolute_symlink_stays_inside(apply: Runner, sandbox: dict[str, Path]) -> None:
    inner_rel = str(sandbox["outside"]).lstrip("/")
    apply(member(inner_rel, type=tarfile.DIRTYPE)
          + member("evil", type=tarfile.SYMTYPE, linkname=str(sandbox["outside"]))
          + member("evil/victim", data=b"overwritten?") + member("evil/new", data=b"new") + END)
    inner = sandbox["target"] / inner_rel
    assert (inner / "victim").read_bytes() == b"overwritten?"
    assert (inner / "new").read_bytes() == b"new"


@pytest.mark.parametrize("entry", [member("l/x", data=b"x"), member("l/d", type=tarfile.DIRTYPE),
                                   member("l/s", type=tarfile.SYMTYPE, linkname="/x"), member("l/a/x", data=b"x"),
                                   member("l/a/b/", type=tarfile.DIRTYPE), member("l/sub/.wh.foo")],
                         ids=["file", "dir", "symlink", "deeper-file", "deeper-dir", "deeper-whiteout"])
@pytest.mark.parametrize("mode", ["overlay", "vfs"])
def test_writes_through_a_dangling_symlink_are_refused(apply: Runner, sandbox: dict[str, Path], entry: bytes,
                                                        mode: str) -> None:
    # podman (chrooted pkg/archive Unpack/UnpackLayer) fails these with ENOENT or "mkdir /l: file exists":
    # MkdirAll never creates a link's missing target, and open/mkdir under the link find nothing.
    with pytest.raises(HostileArchiveError, match="symbolic link b'l' -> b'/some/missing/dir'"):
        apply(member("l", type=tarfile.SYMTYPE, linkname="/some/missing/dir") + entry + END, mode=mode)
    assert not (sandbox["target"] / "some").exists()


def test_a_relative_dangling_symlink_is_refused_too(apply: Runner, sandbox: dict[str, Path]) -> None:
    with pytest.raises(HostileArchiveError, match="does not exist in the layer"):
        apply(member("d", type=tarfile.DIRTYPE) + member("l", type=tarfile.SYMTYPE, linkname="d/missing/deeper")
              + member("l/x", data=b"x") + END)
    assert os.listdir(sandbox["target"] / "d") == []


@pytest.mark.parametrize("entry", [member("l/.wh.foo"), member("l/.wh..wh..opq")], ids=["whiteout", "opaque"])
def test_whiteouts_under_a_dangling_symlink(apply: Runner, sandbox: dict[str, Path], entry: bytes) -> None:
    # overlay: mknod/setxattr under the link fail with ENOENT (podman refuses the layer); vfs: UnpackLayer's
    # RemoveAll of a missing path and its opaque walk of a symlink do nothing (podman accepts the layer).
    link = member("l", type=tarfile.SYMTYPE, linkname="/some/missing/dir")
    with pytest.raises(HostileArchiveError, match="does not exist in the layer"):
        apply(link + entry + END, mode="overlay")
    apply(link + entry + END, mode="vfs")
    assert os.listdir(sandbox["target"]) == ["l"]


def test_a_symlink_to_a_file_is_not_a_directory(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="not a directory"):
        apply(member("t", data=b"t") + member("l", type=tarfile.SYMTYPE, linkname="/t") + member("l/x", data=b"x")
              + END)


def test_write_through_relative_symlink_climbing_out_stays_inside(apply: Runner, sandbox: dict[str, Path]) -> None:
    apply(member("tmp", type=tarfile.DIRTYPE) + member("up", type=tarfile.SYMTYPE, linkname="../../../../../..")
          + member("dir/deeper", type=tarfile.SYMTYPE, linkname="../up/tmp") + member("up/hostile-escape", data=b"1")
          + member("dir/deeper/x", data=b"2") + END)
    assert (sandbox["target"] / "hostile-escape").read_bytes() == b"1"
    assert (sandbox["target"] / "tmp" / "x").read_bytes() == b"2"


def test_symlink_chains_resolve_inside(apply: Runner, sandbox: dict[str, Path]) -> None:
    inner_rel = str(sandbox["outside"]).lstrip("/")
    apply(member(inner_rel, type=tarfile.DIRTYPE) + member("a", type=tarfile.SYMTYPE, linkname="b")
          + member("b", type=tarfile.SYMTYPE, linkname="c/")
          + member("c", type=tarfile.SYMTYPE, linkname=str(sandbox["outside"]))
          + member("a/victim", data=b"chained") + END)
    assert (sandbox["target"] / inner_rel / "victim").read_bytes() == b"chained"


def test_symlink_loops_are_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="too many levels"):
        apply(member("a", type=tarfile.SYMTYPE, linkname="b") + member("b", type=tarfile.SYMTYPE, linkname="a")
              + member("a/x", data=b"x") + END)


def test_symlink_as_final_component_is_replaced_not_followed(apply: Runner, sandbox: dict[str, Path]) -> None:
    apply(member("f", type=tarfile.SYMTYPE, linkname=str(sandbox["outside"] / "victim"))
          + member("/f", data=b"replaced the link") + END)
    assert not os.path.islink(sandbox["target"] / "f")
    assert (sandbox["target"] / "f").read_bytes() == b"replaced the link"


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../etc/passwd", "../outside/victim"])
def test_hardlinks_to_outside_files_are_refused(apply: Runner, link: str) -> None:
    with pytest.raises(HostileArchiveError, match="target not in this layer"):
        apply(member("h", type=tarfile.LNKTYPE, linkname=link) + END)


def test_hardlink_through_symlinked_dir_cannot_reach_outside(apply: Runner, sandbox: dict[str, Path]) -> None:
    with pytest.raises(HostileArchiveError, match="target not in this layer"):
        apply(member("out", type=tarfile.SYMTYPE, linkname=str(sandbox["outside"]))
              + member("h", type=tarfile.LNKTYPE, linkname="out/victim") + END)


def test_hardlink_to_a_directory_is_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="directory"):
        apply(member("d", type=tarfile.DIRTYPE) + member("h", type=tarfile.LNKTYPE, linkname="d") + END)


def test_hardlink_then_rewrite_does_not_write_through(apply: Runner, sandbox: dict[str, Path]) -> None:
    apply(member("orig", data=b"original") + member("h", type=tarfile.LNKTYPE, linkname="orig")
          + member("/h", data=b"rewritten") + END)
    assert (sandbox["target"] / "orig").read_bytes() == b"original"
    assert (sandbox["target"] / "h").read_bytes() == b"rewritten"


def test_truncated_content_is_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="truncated"):
        apply(member("f", data=b"", size=1000) + b"only a hundred bytes".ljust(100, b"."))


def test_truncated_header_is_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="truncated"):
        apply(member("f", data=b"x") + member("g", data=b"y")[:300])


def test_data_past_the_declared_size_is_refused(apply: Runner) -> None:
    body = b"A" * 2000
    lying = member("f", data=b"", size=10) + body + END
    with pytest.raises(HostileArchiveError, match="checksum"):
        apply(lying)


def test_huge_pax_header_is_refused_before_buffering(apply: Runner) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 2 * 1024 * 1024 * 1024
    with pytest.raises(HostileArchiveError, match="exceeds"):
        apply(info.tobuf(format=tarfile.USTAR_FORMAT) + b"9 a=b\n")


def test_huge_gnu_long_name_is_refused(apply: Runner) -> None:
    name = "n" * (1024 * 1024 + 10)
    with pytest.raises(HostileArchiveError, match="exceeds"):
        apply(member(name, data=b"x", fmt=tarfile.GNU_FORMAT) + END)


def test_negative_pax_size_is_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="negative"):
        apply(member("f", pax={"size": "-5"}) + END)


def test_malformed_pax_records_are_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError, match="PAX"):
        apply(member("f", pax={"path": "a\0b"}) + END)


def test_bad_checksum_is_refused(apply: Runner) -> None:
    blob = bytearray(member("f", data=b"x") + END)
    blob[5] ^= 0x01
    with pytest.raises(HostileArchiveError, match="checksum"):
        apply(bytes(blob))


@pytest.mark.parametrize("name", [".", "/", ".."])
def test_non_directory_at_the_root_is_refused(apply: Runner, name: str) -> None:
    with pytest.raises(HostileArchiveError, match="root"):
        apply(member(name, data=b"x") + END)


def test_sparse_files_are_refused(apply: Runner) -> None:
    with pytest.raises(UnsupportedError, match="sparse"):
        apply(member("s", type=tarfile.GNUTYPE_SPARSE, data=b"", fmt=tarfile.GNU_FORMAT) + END)
    with pytest.raises(UnsupportedError, match="sparse"):
        apply(member("p", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + END)


def test_unknown_entry_types_are_refused(apply: Runner) -> None:
    with pytest.raises(StoreError, match="unsupported tar entry type"):
        apply(member("c", type=tarfile.CONTTYPE, data=b"x") + END)


def test_whiteouts_cannot_delete_outside_in_vfs_mode(apply: Runner, sandbox: dict[str, Path]) -> None:
    rel = os.path.relpath(sandbox["outside"], sandbox["target"])  # ../outside
    apply(member(f"{rel}/.wh.victim") + member("../../.wh..wh..opq") + member("/.wh.nothing") + END, mode="vfs")
    assert (sandbox["outside"] / "victim").read_bytes() == b"precious"


def test_whiteout_through_symlink_cannot_delete_outside(apply: Runner, sandbox: dict[str, Path]) -> None:
    inner_rel = str(sandbox["outside"]).lstrip("/")
    apply(member(f"{inner_rel}/victim", data=b"the layer's") + member("o", type=tarfile.SYMTYPE,
          linkname=str(sandbox["outside"])) + member("o/.wh.victim") + member("o/.wh..wh..opq") + END, mode="vfs")
    assert not (sandbox["target"] / inner_rel / "victim").exists()
    assert (sandbox["outside"] / "victim").read_bytes() == b"precious"


def test_overlay_whiteout_never_leaves_wh_files(apply: Runner, sandbox: dict[str, Path]) -> None:
    apply(member(".wh.x") + member("d/.wh..wh..opq") + member(".wh..wh.plnk/123", data=b"aufs") + END)
    names = [p for p in snapshot(sandbox["target"]) if b".wh." in p]
    assert names == []


def test_zero_block_followed_by_garbage_is_refused(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError):
        apply(member("f", data=b"x") + b"\0" * 512 + member("g", data=b"y") + END)


def test_not_a_tar_at_all(apply: Runner) -> None:
    with pytest.raises(HostileArchiveError):
        apply(io.BytesIO(b"<html>not a layer</html>".ljust(2048, b" ")).getvalue())


def test_very_deep_names_are_refused_without_recursion_errors(apply: Runner, sandbox: dict[str, Path]) -> None:
    # deep enough to break a recursive resolver, shallow enough for pytest's recursive tmp cleanup
    apply(member("a/" * 600 + "f", data=b"deep but legal") + END)
    assert (sandbox["target"] / ("a/" * 600 + "f")).read_bytes() == b"deep but legal"
    with pytest.raises(HostileArchiveError, match="PATH_MAX") as info:
        apply(member("b/" * 3000 + "g", data=b"x") + END)
    # the 6,000-character name is shown by its head and tail, saying how much was left out
    assert len(str(info.value)) < 500 and "characters left out" in str(info.value)
