"""Signature formats (payloads, lookaside blobs), registries.d and lookaside reading/writing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.harness.signing import write_lookaside
from tether.registry.errors import ConfigError, InvalidSignatureError, PolicyError
from tether.registry.reference import parse_normalized_named
from tether.registry.trust.fetch import (
    read_lookaside_blobs,
    read_lookaside_signatures,
    sigstore_attachment_tag,
    write_lookaside_blobs,
)
from tether.registry.trust.registries_d import (
    DEFAULT_ROOT_LOOKASIDE,
    RegistriesD,
    RegistryNamespace,
    load_registries_d,
    lookaside_signature_url,
)
from tether.registry.trust.signature import (
    SIGSTORE_PAYLOAD_TYPE,
    SIGSTORE_SIGNATURE_MIME_TYPE,
    SIMPLE_SIGNING_TYPE,
    SigstoreSignature,
    SimpleSigningSignature,
    manifest_matches_digest,
    parse_signature_blob,
    parse_signature_payload,
)

D = "sha256:" + "a" * 64


def payload(critical: object, optional: object = None, *, raw: str | None = None) -> bytes:
    if raw is not None:
        return raw.encode()
    return json.dumps({"critical": critical, "optional": optional if optional is not None else {}}).encode()


def critical(kind: str = SIMPLE_SIGNING_TYPE, digest: str = D, ref: str = "example.com/a:1") -> dict[str, object]:
    return {"type": kind, "image": {"docker-manifest-digest": digest}, "identity": {"docker-reference": ref}}


@pytest.mark.parametrize(("data", "error"), [
    (payload(critical()), None),
    (payload(critical(), {"creator": "c", "timestamp": 12, "other": [1]}), None),
    (payload(critical(), raw=None), None),
    (b"not json", "payload is not JSON"),
    (payload(critical(), raw='{"critical": {}, "critical": {}, "optional": {}}'), 'Duplicate key "critical"'),
    (json.dumps({"critical": critical()}).encode(), 'Key "optional" missing'),
    (json.dumps({"critical": critical(), "optional": {}, "x": 1}).encode(), 'Unknown key "x"'),
    (payload({**critical(), "extra": 1}), 'Unknown key "extra"'),
    (payload(critical(kind="cosign container image signature")), "Unrecognized signature type"),
    (payload(critical(digest="sha256:abc")), "invalid docker-manifest-digest value"),
    (payload(critical(), {"timestamp": 1.5}), "Field optional.timestamp is not an integer"),
    (payload({"type": SIMPLE_SIGNING_TYPE, "image": {"docker-manifest-digest": D, "x": 1},
              "identity": {"docker-reference": "a"}}), 'Unknown key "x"'),
    (payload({"type": SIMPLE_SIGNING_TYPE, "image": {"docker-manifest-digest": D}, "identity": {}}),
     'Key "docker-reference" missing'),
    (json.dumps({"critical": critical(), "optional": None}).encode(), "optional: JSON object expected"),
])
def test_simple_signing_payload(data: bytes, error: str | None) -> None:
    if error is None:
        parsed = parse_signature_payload(data, expected_type=SIMPLE_SIGNING_TYPE)
        assert parsed.docker_manifest_digest == D and parsed.docker_reference == "example.com/a:1"
    else:
        with pytest.raises(InvalidSignatureError, match=error):
            parse_signature_payload(data, expected_type=SIMPLE_SIGNING_TYPE)


def test_sigstore_payload_accepts_null_optional() -> None:
    data = json.dumps({"critical": critical(kind=SIGSTORE_PAYLOAD_TYPE), "optional": None}).encode()
    assert parse_signature_payload(data, expected_type=SIGSTORE_PAYLOAD_TYPE).creator is None


def test_manifest_digest_matching() -> None:
    import hashlib

    body = b"{}"
    assert manifest_matches_digest(body, "sha256:" + hashlib.sha256(body).hexdigest())
    assert manifest_matches_digest(body, "sha512:" + hashlib.sha512(body).hexdigest())
    assert not manifest_matches_digest(body, D)
    assert not manifest_matches_digest(body, "md5:" + hashlib.md5(body).hexdigest())


def test_signature_blob_formats() -> None:
    assert parse_signature_blob(b"\xa3\x01rest") == SimpleSigningSignature(b"\xa3\x01rest")
    assert parse_signature_blob(b"\x00simple-signing\n\x90x") == SimpleSigningSignature(b"\x90x")
    sig = SigstoreSignature(SIGSTORE_SIGNATURE_MIME_TYPE, b"payload", {"k": "v"})
    assert parse_signature_blob(sig.to_blob()) == sig
    for bad, message in [(b"", "empty"), (b"{json", "starting with binary"), (b"\x00noline", "missing newline"),
                         (b"\x00other\nx", "unrecognized signature format 'other'"),
                         (b"\x00sigstore-json\n{", "invalid sigstore-json")]:
        with pytest.raises(InvalidSignatureError, match=message):
            parse_signature_blob(bad)
    assert sigstore_attachment_tag(D) == "sha256-" + "a" * 64 + ".sig"


# ---------------------------------------------------------------------------------------------------------
# registries.d


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_registries_d_merge_and_lookup(tmp_path: Path) -> None:
    d = tmp_path / "registries.d"
    write(d / "default.yaml", "default-docker:\n  lookaside: file:///var/lib/sigs\n")
    write(d / "quay.yaml", """
docker:
  quay.io:
    lookaside: https://sigs.example.com/quay
    use-sigstore-attachments: true
  quay.io/org/special:
    lookaside: file:///special
    lookaside-staging: file:///staging
  quay.io/org/plain:
    use-sigstore-attachments: false
  "*.example.net":
    sigstore: https://legacy.example.net/sigs
""")
    write(d / "ignored.yml", "default-docker: {lookaside: file:///nope}\n")
    conf = load_registries_d(d, home=str(tmp_path / "home"), euid=0)
    r = parse_normalized_named
    assert conf.lookaside_base(r("quay.io/org/app:1")) == "https://sigs.example.com/quay/org/app"
    assert conf.lookaside_base(r("quay.io/org/special:1")) == "file:///special/org/special"
    assert conf.lookaside_base(r("quay.io/org/special:1"), write=True) == "file:///staging/org/special"
    assert conf.lookaside_base(r("a.example.net/x/y:1")) == "https://legacy.example.net/sigs/x/y"
    assert conf.lookaside_base(r("busybox")) == "file:///var/lib/sigs/library/busybox"
    assert conf.use_sigstore_attachments(r("quay.io/org/app:1")) is True
    assert conf.use_sigstore_attachments(r("quay.io/org/plain:1")) is False
    assert conf.use_sigstore_attachments(r("quay.io/org/special:1")) is True  # falls through to quay.io
    assert conf.use_sigstore_attachments(r("docker.io/a/b:1")) is False
    assert lookaside_signature_url("file:///s/org/app", D, 0) == f"file:///s/org/app@sha256={'a' * 64}/signature-1"


def test_registries_d_defaults_and_errors(tmp_path: Path) -> None:
    r = parse_normalized_named
    empty = load_registries_d(tmp_path / "missing", home=str(tmp_path), euid=0)
    assert empty.lookaside_base(r("quay.io/a/b:1")) == DEFAULT_ROOT_LOOKASIDE + "/a/b"
    user = load_registries_d(tmp_path / "missing", home=str(tmp_path), euid=1000)
    assert user.lookaside_base(r("quay.io/a/b:1")) == (tmp_path / ".local/share/containers/sigstore").as_uri() + "/a/b"
    # the per-user directory wins over the system one when it exists
    write(tmp_path / ".config/containers/registries.d/u.yaml", "docker:\n  quay.io:\n    lookaside: file:///u\n")
    assert load_registries_d(home=str(tmp_path), euid=0).lookaside_base(r("quay.io/a:1")) == "file:///u/a"
    d = tmp_path / "dups"
    write(d / "a.yaml", "docker:\n  quay.io:\n    lookaside: file:///a\n")
    write(d / "b.yaml", "docker:\n  quay.io:\n    lookaside: file:///b\n")
    with pytest.raises(ConfigError, match=r"\"docker\" namespace 'quay\.io' defined both in"):
        load_registries_d(d, home=str(tmp_path))
    d2 = tmp_path / "dupdefault"
    write(d2 / "a.yaml", "default-docker:\n  lookaside: file:///a\n")
    write(d2 / "b.yaml", "default-docker:\n  lookaside: file:///b\n")
    with pytest.raises(ConfigError, match='"default-docker" defined both'):
        load_registries_d(d2, home=str(tmp_path))
    d3 = tmp_path / "bad"
    write(d3 / "a.yaml", "docker: [unclosed\n")
    with pytest.raises(ConfigError, match=r"parsing .*a\.yaml"):
        load_registries_d(d3, home=str(tmp_path))
    d4 = tmp_path / "badtype"
    write(d4 / "a.yaml", "docker:\n  quay.io:\n    use-sigstore-attachments: maybe\n")
    with pytest.raises(ConfigError, match="use-sigstore-attachments: boolean expected"):
        load_registries_d(d4, home=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------
# lookaside stores


async def test_file_lookaside_read_and_write(tmp_path: Path) -> None:
    write_lookaside(tmp_path / "store", "org/app", D, [b"\xa3one", b"\xa3two"])
    base = (tmp_path / "store").as_uri() + "/org/app"
    assert await read_lookaside_blobs(base, D) == (b"\xa3one", b"\xa3two")
    assert await read_lookaside_signatures(base, "sha256:" + "b" * 64) == ()
    target = (tmp_path / "mirror").as_uri() + "/org/app"
    write_lookaside(tmp_path / "mirror", "org/app", D, [b"old1", b"old2", b"old3"])
    await write_lookaside_blobs(target, D, [b"\xa3one", b"\xa3two"])
    # the stale third file is gone, so readers stop after two
    assert await read_lookaside_blobs(target, D) == (b"\xa3one", b"\xa3two")
    write_lookaside(tmp_path / "junk", "org/app", D, [b"{not a signature"])
    with pytest.raises(PolicyError, match="unrecognized signature format"):
        await read_lookaside_signatures((tmp_path / "junk").as_uri() + "/org/app", D)
    with pytest.raises(PolicyError, match="only file:// lookaside"):
        await write_lookaside_blobs("https://example.com/x", D, [b"x"])
    with pytest.raises(PolicyError, match="Unsupported scheme"):
        await read_lookaside_blobs("ftp://example.com/x", D)


async def test_http_lookaside_statuses() -> None:
    served = {f"/sigs/org/app@sha256={'a' * 64}/signature-1": b"\xa3first",
              f"/sigs/org/app@sha256={'a' * 64}/signature-2": b"\x00simple-signing\n\x90second"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.startswith("/broken"):
            return httpx.Response(500)
        body = served.get(request.url.path)
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        sigs = await read_lookaside_signatures("https://sigs.example.com/sigs/org/app", D, http=http)
        assert sigs == (SimpleSigningSignature(b"\xa3first"), SimpleSigningSignature(b"\x90second"))
        assert seen[-1].endswith("signature-3")  # stopped at the first 404
        with pytest.raises(PolicyError, match=r"https://\*\*\*@sigs.example.com/broken.*status 500"):
            await read_lookaside_blobs("https://user:secret@sigs.example.com/broken", D, http=http)


def test_namespace_top_level_precedence() -> None:
    ns = RegistryNamespace(lookaside="l", lookaside_staging="ls", sigstore="s", sigstore_staging="ss")
    assert ns.top_level(write=False) == "l" and ns.top_level(write=True) == "ls"
    legacy = RegistryNamespace(sigstore="s", sigstore_staging="ss")
    assert legacy.top_level(write=False) == "s" and legacy.top_level(write=True) == "ss"
    conf = RegistriesD(docker={"quay.io/a": RegistryNamespace(use_sigstore_attachments=True)},
                       default_docker=RegistryNamespace(lookaside="file:///d"))
    ref = parse_normalized_named("quay.io/a:1")
    assert conf.lookaside_base(ref) == "file:///d/a"  # an entry without lookaside falls through


# ---------------------------------------------------------------------------------------------------------
# fetch_signatures: the registry signature API extension replaces lookaside when offered


class _ExtensionClient:
    """Stands in for RegistryClient: only the signature extension (no manifests needed here)."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.asked: list[tuple[str, str]] = []

    async def fetch_signature_extension(self, repository: object, digest: str) -> bytes | None:
        self.asked.append((str(repository), digest))
        return self.body


async def test_signature_extension_replaces_lookaside(tmp_path: Path) -> None:
    from tether.registry.reference import Reference
    from tether.registry.trust.fetch import fetch_signatures, parse_extension_signatures

    body = json.dumps({"signatures": [
        {"schemaVersion": 2, "type": "atomic", "name": f"{D}@sig1", "content": base64.b64encode(b"\xa3ext").decode()},
        {"schemaVersion": 1, "type": "atomic", "name": "old", "content": base64.b64encode(b"\xa3old").decode()},
        {"schemaVersion": 2, "type": "other", "name": "x", "content": ""},
    ]}).encode()
    assert parse_extension_signatures(body) == (SimpleSigningSignature(b"\xa3ext"),)
    with pytest.raises(PolicyError, match="decoding signature list"):
        parse_extension_signatures(b'{"signatures": 3}')
    write_lookaside(tmp_path / "l", "org/app", D, [b"\xa3lookaside"])
    regd = RegistriesD(default_docker=RegistryNamespace(lookaside=(tmp_path / "l").as_uri()))
    repo = Reference("registry.example.com", "org/app", "1")
    offered = _ExtensionClient(body)
    sigs = await fetch_signatures(client=offered, repository=repo, manifest_digest=D, registries_d=regd)  # type: ignore[arg-type]
    assert sigs == (SimpleSigningSignature(b"\xa3ext"),)
    assert offered.asked == [(str(repo), D)]
    not_offered = _ExtensionClient(None)
    sigs = await fetch_signatures(client=not_offered, repository=repo, manifest_digest=D, registries_d=regd)  # type: ignore[arg-type]
    assert sigs == (SimpleSigningSignature(b"\xa3lookaside"),)


def test_render_registries_d_round_trips(tmp_path: Path) -> None:
    from tether.registry.trust.registries_d import parse_registries_d_file, render_registries_d

    docker = {"mirror.local:5000/team": RegistryNamespace(lookaside="file:///srv/sigs", use_sigstore_attachments=True),
              "mirror.local:5000/other": RegistryNamespace(use_sigstore_attachments=False),
              'odd"scope': RegistryNamespace()}
    text = render_registries_d(docker, default_docker=RegistryNamespace(lookaside="https://sigs.example/x y"))
    default, parsed = parse_registries_d_file(text, source="rendered")
    assert parsed == docker
    assert default == RegistryNamespace(lookaside="https://sigs.example/x y")


def test_go_base64_skips_line_breaks_only() -> None:
    from tether.registry.trust.signature import go_b64decode

    assert go_b64decode("aGVs\nbG8=\r\n") == b"hello"  # openssl/cosign wrap base64 at 64/76 columns
    for bad in ("aGVs bG8=", "aGVsbG8", "aGVs\tbG8=", "é"):
        with pytest.raises(ValueError):
            go_b64decode(bad)
