"""containers-policy.json(5): parsing, scope matching, identity rules and requirement evaluation (tables).

Cases follow containers/image's signature/policy_*_test.go. Signatures are made in memory: cosign-style
ECDSA P-256 for sigstoreSigned, a throwaway GPG key (the real gpg tool) for signedBy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.signing import CosignKey, FulcioCA, GPGSigner, key_data, make_rekor_set, pki_sign_image
from tether.registry.errors import ConfigError
from tether.registry.reference import Reference, docker_policy_namespaces, parse_normalized_named
from tether.registry.trust.config import (
    SignedBy,
    SigstoreSigned,
    docker_scope,
    find_policy_file,
    layout_scope,
    load_policy,
    parse_policy,
    requirements_for,
)
from tether.registry.trust.evaluate import evaluate_policy, needs_signatures
from tether.registry.trust.identity import (
    ExactReference,
    ExactRepository,
    IdentityMatch,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
    identity_matches,
)
from tether.registry.trust.image import PolicyImage
from tether.registry.trust.signature import (
    SIGSTORE_PAYLOAD_TYPE,
    SIGSTORE_SET_ANNOTATION,
    SIGSTORE_SIGNATURE_ANNOTATION,
    SIGSTORE_SIGNATURE_MIME_TYPE,
    SigstoreSignature,
    SimpleSigningSignature,
    make_signature_payload,
)
from tether.registry.trust.sigstore import sign_sigstore_payload

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OTHER_DIGEST = "sha256:" + "0" * 64


def ref(text: str) -> Reference:
    return parse_normalized_named(text)


# ---------------------------------------------------------------------------------------------------------
# parsing

VALID = {
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {
            "quay.io/org": [{"type": "insecureAcceptAnything"}],
            "*.example.com": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}],
            "example.com/a:tag": [{"type": "sigstoreSigned", "keyPath": "/c.pub",
                                   "signedIdentity": {"type": "matchRepository"}}],
            "r.io/x": [{"type": "sigstoreSigned", "keyData": key_data(b"pem"),
                        "signedIdentity": {"type": "remapIdentity", "prefix": "r.io", "signedPrefix": "s.io/m"}}],
            "f.io": [{"type": "sigstoreSigned", "fulcio": {"caPath": "/ca", "oidcIssuer": "https://i",
                                                          "subjectEmail": "a@b"},
                      "rekorPublicKeyPath": "/rekor.pub", "signedIdentity": {"type": "matchRepoDigestOrExact"}}],
        },
        "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
        "oci": {"/srv/layouts": [{"type": "reject"}]},
        "atomic": {"whatever": [{"type": "reject"}]},
    },
}


def test_parse_valid_policy_keeps_every_section() -> None:
    policy = parse_policy(json.dumps(VALID), source="/etc/containers/policy.json")
    assert policy.default[0].type == "reject"
    docker = policy.transports["docker"]
    signed_by = docker["*.example.com"][0]
    assert isinstance(signed_by, SignedBy)
    assert signed_by.key_path == "/k.gpg"
    assert isinstance(signed_by.signed_identity, MatchRepoDigestOrExact)  # the default
    remap = docker["r.io/x"][0]
    assert isinstance(remap, SigstoreSigned)
    assert remap.key_data == b"pem"
    assert remap.signed_identity == RemapIdentity("r.io", "s.io/m")
    fulcio = docker["f.io"][0]
    assert isinstance(fulcio, SigstoreSigned) and fulcio.fulcio is not None and fulcio.uses_rekor


def _policy_with(req: Any) -> str:
    return json.dumps({"default": [req]})


@pytest.mark.parametrize(("text", "expected"), [
    ("{", "invalid JSON"),
    ("[]", "JSON object expected"),
    ('{"transports": {}}', "at default: Default policy is missing"),
    ('{"default": []}', "at default: List of verification policy requirements must not be empty"),
    ('{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', 'Duplicate key "default"'),
    ('{"default": [{"type": "reject"}], "extra": 1}', 'at extra: Unknown key "extra"'),
    (_policy_with({"type": "nope"}), 'at default[0].type: Unknown policy requirement type \'nope\''),
    (_policy_with({"type": "reject", "keyPath": "/x"}), 'at default[0].keyPath: Unknown key "keyPath"'),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys"}), "none of them present"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a", "keyData": "YQ=="}),
     "more than one present"),
    (_policy_with({"type": "signedBy", "keyType": "PGP", "keyPath": "/a"}),
     "at default[0].keyType: Unrecognized keyType value 'PGP'"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyData": "!!"}),
     "at default[0].keyData: invalid base64"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",
                   "signedIdentity": {"type": "exactReference", "dockerReference": "busybox"}}),
     "contains neither a tag nor digest"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",
                   "signedIdentity": {"type": "exactRepository", "dockerRepository": "upper/CASE"}}),
     "Invalid format of dockerRepository"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",
                   "signedIdentity": {"type": "remapIdentity", "prefix": "example.com/ns:tag",
                                      "signedPrefix": "c.io"}}),
     "at default[0].signedIdentity.prefix: prefix 'example.com/ns:tag' is not valid"),
    (_policy_with({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",
                   "signedIdentity": {"type": "matchExact", "extra": 1}}), 'Unknown key "extra"'),
    (_policy_with({"type": "sigstoreSigned", "keyPath": "/a"}), "signedIdentity not specified"),
    (_policy_with({"type": "sigstoreSigned", "signedIdentity": {"type": "matchExact"}}),
     "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified"),
    (_policy_with({"type": "sigstoreSigned", "keyPaths": [], "signedIdentity": {"type": "matchExact"}}),
     '"keyPaths" contains no entries'),
    (_policy_with({"type": "sigstoreSigned", "fulcio": {"caPath": "/c", "oidcIssuer": "i", "subjectEmail": "e"},
                   "signedIdentity": {"type": "matchExact"}}), "must be specified if fulcio is used"),
    (_policy_with({"type": "sigstoreSigned", "fulcio": {"caPath": "/c"}, "rekorPublicKeyPath": "/r",
                   "signedIdentity": {"type": "matchExact"}}), "oidcIssuer not specified"),
    ('{"default": [{"type": "reject"}], "transports": {"oci": {"relative/dir": [{"type": "reject"}]}}}',
     'at transports.oci["relative/dir"]: Invalid scope relative/dir: must be an absolute path'),
    ('{"default": [{"type": "reject"}], "transports": {"oci": {"/a/../b": [{"type": "reject"}]}}}',
     "non-canonical path format"),
    ('{"default": [{"type": "reject"}], "transports": {"docker": {"x.io": []}}}',
     'at transports.docker["x.io"]: List of verification policy requirements must not be empty'),
])
def test_parse_errors_name_file_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="/tmp/p.json")
    assert "invalid policy in /tmp/p.json" in str(info.value)
    assert expected in str(info.value)


def test_load_policy_file_and_lookup(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(VALID))
    assert load_policy(path).source == str(path)
    # no --signature-policy: $HOME/.config/containers/policy.json first, then the system file
    home = tmp_path / "home"
    system = tmp_path / "system.json"
    with pytest.raises(ConfigError, match=r"no policy\.json file found"):
        find_policy_file(home=str(home), system=system)
    system.write_text("{}")
    assert find_policy_file(home=str(home), system=system) == system
    user = home / ".config/containers/policy.json"
    user.parent.mkdir(parents=True)
    user.write_text("{}")
    assert find_policy_file(home=str(home), system=system) == user
    with pytest.raises(ConfigError, match="cannot read signature policy"):
        load_policy(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------------
# scopes

SCOPES_POLICY = parse_policy(json.dumps({
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {
            "": [{"type": "insecureAcceptAnything"}],
            "example.com": [{"type": "insecureAcceptAnything"}],
            "example.com/ns": [{"type": "insecureAcceptAnything"}],
            "example.com/ns/repo": [{"type": "insecureAcceptAnything"}],
            "example.com/ns/repo:tag": [{"type": "insecureAcceptAnything"}],
            "example.com/ns/repo@" + OTHER_DIGEST: [{"type": "insecureAcceptAnything"}],
            "*.example.com": [{"type": "insecureAcceptAnything"}],
            "*.com": [{"type": "insecureAcceptAnything"}],
            "localhost:5000": [{"type": "insecureAcceptAnything"}],
            "docker.io/library": [{"type": "insecureAcceptAnything"}],
        },
        "oci": {"/srv/layouts": [{"type": "insecureAcceptAnything"}],
                "/srv/layouts/special": [{"type": "insecureAcceptAnything"}]},
    },
}))


@pytest.mark.parametrize(("image", "label"), [
    ("example.com/ns/repo:tag", 'transports.docker["example.com/ns/repo:tag"]'),
    ("example.com/ns/repo:other", 'transports.docker["example.com/ns/repo"]'),
    (f"example.com/ns/repo@{OTHER_DIGEST}", f'transports.docker["example.com/ns/repo@{OTHER_DIGEST}"]'),
    (f"example.com/ns/repo@{DIGEST}", 'transports.docker["example.com/ns/repo"]'),
    ("example.com/ns/other:tag", 'transports.docker["example.com/ns"]'),
    ("example.com/ns2/repo:tag", 'transports.docker["example.com"]'),
    ("example.com/nsx:tag", 'transports.docker["example.com"]'),           # not a path-prefix of ns
    ("a.example.com/x:1", 'transports.docker["*.example.com"]'),
    ("b.a.example.com/x:1", 'transports.docker["*.example.com"]'),
    ("example.org.com/x:1", 'transports.docker["*.com"]'),
    ("localhost:5000/x:1", 'transports.docker["localhost:5000"]'),
    ("localhost:6000/x:1", 'transports.docker[""]'),
    ("busybox:latest", 'transports.docker["docker.io/library"]'),
    ("quay.io:443/x:1", 'transports.docker[""]'),  # wildcards come from the host without the port
])
def test_docker_scope_matching(image: str, label: str) -> None:
    assert requirements_for(SCOPES_POLICY, docker_scope(ref(image))).label == label


def test_docker_namespaces_follow_c_image() -> None:
    assert docker_policy_namespaces(ref("127.0.0.1:5000/a/b:1")) == (
        "127.0.0.1:5000/a/b", "127.0.0.1:5000/a", "127.0.0.1:5000", "*.0.0.1", "*.0.1", "*.1")
    assert docker_policy_namespaces(ref("quay.io/org/app")) == ("quay.io/org/app", "quay.io/org", "quay.io", "*.io")


def test_layout_scopes_and_default(tmp_path: Path) -> None:
    assert requirements_for(SCOPES_POLICY, layout_scope("oci", "/srv/layouts/special")).label == \
        'transports.oci["/srv/layouts/special"]'
    assert requirements_for(SCOPES_POLICY, layout_scope("oci", "/srv/layouts/a/b")).label == \
        'transports.oci["/srv/layouts"]'
    assert requirements_for(SCOPES_POLICY, layout_scope("oci", "/elsewhere")).label == "default"
    # oci-archive has no section: default; symlinks are resolved before matching
    assert requirements_for(SCOPES_POLICY, layout_scope("oci-archive", "/srv/layouts/x.tar")).label == "default"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert layout_scope("oci", str(tmp_path / "link")).identity == str((tmp_path / "real").resolve())
    # a transport without a "" scope falls back to default
    policy = parse_policy(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                                      "transports": {"docker": {"x.io": [{"type": "reject"}]}}}))
    assert requirements_for(policy, docker_scope(ref("y.io/a:1"))).label == "default"


# ---------------------------------------------------------------------------------------------------------
# signedIdentity rules (c/image policy_reference_match_test.go)

IDENTITY_CASES: list[tuple[IdentityMatch, str, str, bool]] = [
    # rule, image as pulled, signed identity, matches
    (MatchExact(), "example.com/ns/repo:tag", "example.com/ns/repo:tag", True),
    (MatchExact(), "example.com/ns/repo:tag", "example.com/ns/repo:other", False),
    (MatchExact(), "example.com/ns/repo:tag", "example.com/ns/repo", False),
    (MatchExact(), f"example.com/ns/repo@{DIGEST}", f"example.com/ns/repo@{DIGEST}", True),
    (MatchExact(), f"example.com/ns/repo@{DIGEST}", "example.com/ns/repo:tag", False),
    (MatchExact(), "busybox:latest", "docker.io/library/busybox:latest", True),
    (MatchExact(), "busybox:latest", "busybox:latest", True),
    (MatchRepoDigestOrExact(), "example.com/ns/repo:tag", "example.com/ns/repo:tag", True),
    (MatchRepoDigestOrExact(), "example.com/ns/repo:tag", "example.com/ns/repo:other", False),
    (MatchRepoDigestOrExact(), f"example.com/ns/repo@{DIGEST}", "example.com/ns/repo:anytag", True),
    (MatchRepoDigestOrExact(), f"example.com/ns/repo@{DIGEST}", f"example.com/ns/repo@{OTHER_DIGEST}", True),
    (MatchRepoDigestOrExact(), f"example.com/ns/repo@{DIGEST}", "example.com/ns/repo", False),
    (MatchRepoDigestOrExact(), f"example.com/ns/repo@{DIGEST}", "example.com/ns/other:tag", False),
    (MatchRepository(), "example.com/ns/repo:tag", "example.com/ns/repo:other", True),
    (MatchRepository(), "example.com/ns/repo:tag", "example.com/ns/repo", True),
    (MatchRepository(), "example.com/ns/repo:tag", "example.com/ns/other:tag", False),
    (ExactReference("example.com/ns/repo:signed"), "anything.io/x:y", "example.com/ns/repo:signed", True),
    (ExactReference("example.com/ns/repo:signed"), "example.com/ns/repo:signed", "example.com/ns/repo:other",
     False),
    (ExactRepository("example.com/ns/repo"), "anything.io/x:y", "example.com/ns/repo:whatever", True),
    (ExactRepository("example.com/ns/repo"), "anything.io/x:y", "example.com/ns/repo2:whatever", False),
    (RemapIdentity("mirror.local/ns", "example.com/ns"), "mirror.local/ns/repo:tag", "example.com/ns/repo:tag", True),
    (RemapIdentity("mirror.local/ns", "example.com/ns"), "mirror.local/ns/repo:tag", "mirror.local/ns/repo:tag",
     False),
    (RemapIdentity("mirror.local/ns", "example.com/ns"), "mirror.local/nsx/repo:tag", "mirror.local/nsx/repo:tag",
     True),  # no prefix match: compared unmapped
    (RemapIdentity("mirror.local", "example.com"), f"mirror.local/r@{DIGEST}", "example.com/r:any", True),
    (MatchExact(), "example.com/ns/repo:tag", "not a reference!", False),
    (MatchRepository(), "example.com/ns/repo:tag", "Example.com/NS/repo:tag", False),
]


@pytest.mark.parametrize(("rule", "image", "signed", "expected"), IDENTITY_CASES)
def test_identity_rules(rule: IdentityMatch, image: str, signed: str, expected: bool) -> None:
    assert identity_matches(rule, ref(image), signed) is expected


def test_identity_rules_without_docker_reference() -> None:
    # OCI layouts have no docker identity: only the absolute rules can match.
    assert identity_matches(MatchRepoDigestOrExact(), None, "example.com/a:b") is False
    assert identity_matches(ExactReference("example.com/a:b"), None, "example.com/a:b") is True


# ---------------------------------------------------------------------------------------------------------
# evaluation


@pytest.fixture(scope="module")
def cosign() -> CosignKey:
    return CosignKey.generate()


@pytest.fixture(scope="module")
def gpg_signer() -> Iterator[GPGSigner]:
    signer = GPGSigner("tether policy")
    try:
        yield signer
    finally:
        signer.close()


def image_for(name: str, manifest: bytes = MANIFEST) -> PolicyImage:
    docker_ref = ref(name)
    return PolicyImage(description=f"docker://{docker_ref}", scope=docker_scope(docker_ref),
                       docker_reference=docker_ref, manifest=manifest,
                       manifest_digest="sha256:" + hashlib.sha256(manifest).hexdigest())


def sigstore_policy(pub: bytes, identity: dict[str, str] | None = None, **extra: Any) -> Any:
    req = {"type": "sigstoreSigned", "keyData": key_data(pub),
           "signedIdentity": identity or {"type": "matchRepoDigestOrExact"}, **extra}
    return parse_policy(json.dumps({"default": [req]}))


def test_simple_requirements() -> None:
    img = image_for("example.com/a:1")
    accept = parse_policy('{"default": [{"type": "insecureAcceptAnything"}]}')
    assert evaluate_policy(accept, img, None).allowed
    reject = parse_policy('{"default": [{"type": "insecureAcceptAnything"}, {"type": "reject"}]}')
    decision = evaluate_policy(reject, img, None)
    assert not decision.allowed and decision.requirement_index == 1 and decision.requirement_type == "reject"
    assert "rejected by signature policy P rule default[1] (reject)" in decision.message(img, "P")
    assert not needs_signatures(reject.default)
    base = parse_policy('{"default": [{"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchExact"}}]}')
    assert "signedBaseLayer is not implemented" in evaluate_policy(base, img, None).reason


def test_sigstore_signed_cases(cosign: CosignKey) -> None:
    other = CosignKey.generate()
    img = image_for("example.com/ns/app:1")
    good = cosign.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1")
    policy = sigstore_policy(cosign.public_pem)
    assert evaluate_policy(policy, img, [good]).allowed
    cases: list[tuple[str, list[Any], str]] = [
        ("unsigned", [], "A signature was required, but no signature exists"),
        ("wrong key", [other.sign_image(manifest_digest=img.manifest_digest,
                                        docker_reference="example.com/ns/app:1")],
         "cryptographic signature verification failed"),
        ("tampered payload", [SigstoreSignature(good.mime_type, good.payload.replace(b"app:1", b"app:2"),
                                                good.annotations)], "cryptographic signature verification failed"),
        ("identity mismatch", [cosign.sign_image(manifest_digest=img.manifest_digest,
                                                 docker_reference="example.com/ns/other:1")],
         "Signature for identity 'example.com/ns/other:1' is not accepted"),
        ("digest mismatch", [cosign.sign_image(manifest_digest=OTHER_DIGEST,
                                               docker_reference="example.com/ns/app:1")],
         f"Signature for digest {OTHER_DIGEST} does not match"),
        ("missing annotation", [SigstoreSignature(good.mime_type, good.payload, {})],
         f"missing {SIGSTORE_SIGNATURE_ANNOTATION} annotation"),
        ("other attachment", [SigstoreSignature("application/vnd.in-toto+json", b"{}", {})],
         "(0 non-sigstore signatures, 1 sigstore non-signature attachments)"),
        ("gpg only", [SimpleSigningSignature(b"\xa3\x01")], "(1 non-sigstore signatures, 0 sigstore"),
        ("wrong payload type", [sign_sigstore_payload(cosign.private, make_signature_payload(
            manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1",
            kind="atomic container signature"))], "Unrecognized signature type atomic container signature"),
    ]
    for what, sigs, reason in cases:
        decision = evaluate_policy(policy, img, sigs)
        assert not decision.allowed, what
        assert reason in decision.reason, (what, decision.reason)
    # two bad signatures: both reasons; one good among bad ones is enough
    two = evaluate_policy(policy, img, [cases[1][1][0], cases[3][1][0]])
    assert two.reason.startswith("None of the signatures were accepted, reasons: ")
    assert evaluate_policy(policy, img, [cases[1][1][0], good]).allowed


def test_sigstore_identity_rules_and_keys(cosign: CosignKey, tmp_path: Path) -> None:
    img = image_for("mirror.local/ns/app:1")
    sig = cosign.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1")
    remap = sigstore_policy(cosign.public_pem, {"type": "remapIdentity", "prefix": "mirror.local/ns",
                                                "signedPrefix": "example.com/ns"})
    assert evaluate_policy(remap, img, [sig]).allowed
    exact_repo = sigstore_policy(cosign.public_pem, {"type": "exactRepository",
                                                     "dockerRepository": "example.com/ns/app"})
    assert evaluate_policy(exact_repo, img, [sig]).allowed
    assert not evaluate_policy(sigstore_policy(cosign.public_pem), img, [sig]).allowed
    # keyPath / keyPaths (one of several keys) / keyDatas
    first = CosignKey.generate().write_public_key(tmp_path / "first.pub")
    mine = cosign.write_public_key(tmp_path / "cosign.pub")
    identity = {"type": "matchRepository"}
    img2 = image_for("example.com/ns/app:1")
    for extra in ({"keyPath": str(mine)}, {"keyPaths": [str(first), str(mine)]},
                  {"keyDatas": [key_data(first.read_bytes()), key_data(cosign.public_pem)]}):
        policy = parse_policy(json.dumps({"default": [{"type": "sigstoreSigned", "signedIdentity": identity,
                                                       **extra}]}))
        assert evaluate_policy(policy, img2, [sig]).allowed, extra
    missing = parse_policy(json.dumps({"default": [{"type": "sigstoreSigned", "keyPath": str(tmp_path / "no.pub"),
                                                    "signedIdentity": identity}]}))
    assert "cannot read key file" in evaluate_policy(missing, img2, [sig]).reason
    garbage = parse_policy(json.dumps({"default": [{"type": "sigstoreSigned", "keyData": key_data(b"junk"),
                                                    "signedIdentity": identity}]}))
    assert "parsing public key 1" in evaluate_policy(garbage, img2, [sig]).reason


@pytest.mark.parametrize(("extra", "reason"), [
    ({"fulcio": {"caData": key_data(b"ca"), "oidcIssuer": "https://i", "subjectEmail": "a@b"},
      "rekorPublicKeyData": key_data(b"r")}, "parsing public key 1 of rekorPublicKey"),
    ({"pki": {"caRootsData": key_data(b"ca"), "subjectEmail": "a@b"}},
     "missing dev.sigstore.cosign/certificate annotation"),
])
def test_unsupported_sigstore_options_fail_closed(extra: dict[str, Any], reason: str, cosign: CosignKey) -> None:
    policy = parse_policy(json.dumps({"default": [{"type": "sigstoreSigned", "signedIdentity":
                                                   {"type": "matchRepository"}, **extra}]}))
    img = image_for("example.com/a:1")
    sig = cosign.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/a:1")
    decision = evaluate_policy(policy, img, [sig])
    assert not decision.allowed and reason in decision.reason


def test_signed_by_gpg_cases(gpg_signer: GPGSigner, tmp_path: Path) -> None:
    img = image_for("example.com/ns/app:1")
    key_path = gpg_signer.write_public_key(tmp_path / "key.asc")
    policy = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                   "keyPath": str(key_path)}]}))
    good = gpg_signer.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1")
    assert evaluate_policy(policy, img, [SimpleSigningSignature(good)]).allowed
    by_data = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                    "keyData": key_data(gpg_signer.public_key)}]}))
    assert evaluate_policy(by_data, img, [SimpleSigningSignature(good)]).allowed
    other = GPGSigner("tether other")
    try:
        wrong = other.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1")
        other_key = other.write_public_key(tmp_path / "other.asc")
    finally:
        other.close()
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0x01
    mismatch = gpg_signer.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/x:1")
    cases = [
        ("unsigned", [], "A signature was required, but no signature exists"),
        ("wrong key", [wrong], "is not accepted"),
        ("tampered", [bytes(tampered)], "Invalid GPG signature"),
        ("identity mismatch", [mismatch], "Signature for identity 'example.com/ns/x:1' is not accepted"),
        ("not pgp", [b"\xa3garbage"], "Invalid GPG signature"),
    ]
    for what, blobs, reason in cases:
        decision = evaluate_policy(policy, img, [SimpleSigningSignature(b) for b in blobs])
        assert not decision.allowed, what
        assert reason in decision.reason, (what, decision.reason)
    # keyPaths with both keys accepts the other signer too
    both = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                 "keyPaths": [str(key_path), str(other_key)]}]}))
    assert evaluate_policy(both, img, [SimpleSigningSignature(wrong)]).allowed
    unimplemented = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "X509Certificates",
                                                          "keyPath": str(key_path)}]}))
    decision = evaluate_policy(unimplemented, img, [SimpleSigningSignature(good)])
    assert not decision.allowed and 'Unimplemented "keyType" value "X509Certificates"' in decision.reason
    no_keys = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                    "keyData": key_data(b"not a key")}]}))
    assert evaluate_policy(no_keys, img, [SimpleSigningSignature(good)]).reason == "No public keys imported"


def test_payload_type_for_gpg_is_atomic(gpg_signer: GPGSigner, tmp_path: Path) -> None:
    img = image_for("example.com/ns/app:1")
    policy = parse_policy(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                                   "keyData": key_data(gpg_signer.public_key)}]}))
    cosign_typed = gpg_signer.sign(make_signature_payload(manifest_digest=img.manifest_digest,
                                                          docker_reference="example.com/ns/app:1",
                                                          kind=SIGSTORE_PAYLOAD_TYPE))
    decision = evaluate_policy(policy, img, [SimpleSigningSignature(cosign_typed)])
    assert "Unrecognized signature type cosign container image signature" in decision.reason


def test_sigstore_with_rekor_sets(cosign: CosignKey) -> None:
    rekor, other_rekor = CosignKey.generate(), CosignKey.generate()
    img = image_for("example.com/ns/app:1")
    sig = cosign.sign_image(manifest_digest=img.manifest_digest, docker_reference="example.com/ns/app:1")
    policy = sigstore_policy(cosign.public_pem, rekorPublicKeyData=key_data(rekor.public_pem))

    def with_set(set_json: str) -> SigstoreSignature:
        return SigstoreSignature(sig.mime_type, sig.payload, {**sig.annotations, SIGSTORE_SET_ANNOTATION: set_json})

    good = with_set(make_rekor_set(rekor, public_pem=cosign.public_pem, signature=sig))
    assert evaluate_policy(policy, img, [good]).allowed
    cases = [
        ("no SET", sig, f"missing {SIGSTORE_SET_ANNOTATION} annotation"),
        ("SET by another log", with_set(make_rekor_set(other_rekor, public_pem=cosign.public_pem, signature=sig)),
         "cryptographic signature verification of Rekor SET failed"),
        ("SET for other data", with_set(make_rekor_set(rekor, public_pem=cosign.public_pem, signature=sig,
                                                       payload_hash="0" * 64)), "payload in Rekor SET does not match"),
        ("SET for another key", with_set(make_rekor_set(rekor, public_pem=other_rekor.public_pem, signature=sig)),
         "publicKey in Rekor SET does not match"),
        ("SET not JSON", with_set("{"), "Rekor SET is not JSON"),
    ]
    for what, candidate, reason in cases:
        decision = evaluate_policy(policy, img, [candidate])
        assert not decision.allowed, what
        assert "No public key verified against the RekorSET" in decision.reason or what == "no SET", decision.reason
        assert reason in decision.reason, (what, decision.reason)
    # a non-ECDSA Rekor key is refused
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed_pem = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = sigstore_policy(cosign.public_pem, rekorPublicKeyData=key_data(ed_pem))
    assert "Rekor public key 1 is not using ECDSA" in evaluate_policy(bad, img, [good]).reason


def test_sigstore_keyless_fulcio(cosign: CosignKey, tmp_path: Path) -> None:
    ca, other_ca, rekor = FulcioCA.generate(), FulcioCA.generate(), CosignKey.generate()
    img = image_for("example.com/ns/app:1")
    (tmp_path / "fulcio.pem").write_bytes(ca.ca_pem)
    policy = parse_policy(json.dumps({"default": [{
        "type": "sigstoreSigned", "rekorPublicKeyData": key_data(rekor.public_pem),
        "fulcio": {"caPath": str(tmp_path / "fulcio.pem"), "oidcIssuer": "https://issuer.example",
                   "subjectEmail": "dev@example.com"},
        "signedIdentity": {"type": "matchRepoDigestOrExact"}}]}))
    common: dict[str, Any] = {"manifest_digest": img.manifest_digest, "docker_reference": "example.com/ns/app:1"}

    def sign(signer: FulcioCA = ca, **options: Any) -> SigstoreSignature:
        values = {"email": "dev@example.com", "oidc_issuer": "https://issuer.example", **options}
        return signer.sign_image(rekor, **common, **values)

    assert evaluate_policy(policy, img, [sign()]).allowed
    assert evaluate_policy(policy, img, [sign(issuer_v2=True)]).allowed
    cases = [
        ("other e-mail", sign(email="eve@example.com"), "Required email 'dev@example.com' not found"),
        ("other issuer", sign(oidc_issuer="https://evil.example"), "Unexpected Fulcio OIDC issuer"),
        ("logged after expiry", sign(set_at=1700000000 + 3600), "veryfing leaf certificate failed"),
        ("untrusted CA", sign(other_ca), "veryfing leaf certificate failed"),
        ("not code signing", sign(code_signing=False), "veryfing leaf certificate failed"),
        ("no chain", sign(with_chain=False), "veryfing leaf certificate failed"),
        ("no certificate", SigstoreSignature(SIGSTORE_SIGNATURE_MIME_TYPE, sign().payload, {
            k: v for k, v in sign().annotations.items() if k != "dev.sigstore.cosign/certificate"}),
         "missing dev.sigstore.cosign/certificate annotation"),
        ("SET by another log", ca.sign_image(CosignKey.generate(), **common, email="dev@example.com",
                                             oidc_issuer="https://issuer.example"),
         "cryptographic signature verification of Rekor SET failed"),
    ]
    for what, sig, reason in cases:
        decision = evaluate_policy(policy, img, [sig])
        assert not decision.allowed, what
        assert reason in decision.reason, (what, decision.reason)
    # a certificate swapped in after logging: the SET names another certificate
    good, other = sign(), sign()
    swapped = SigstoreSignature(good.mime_type, good.payload, {
        **good.annotations, "dev.sigstore.cosign/bundle": other.annotations["dev.sigstore.cosign/bundle"]})
    assert "does not match" in evaluate_policy(policy, img, [swapped]).reason


def test_sigstore_pki_certificates() -> None:
    import time

    from cryptography.hazmat.primitives import serialization

    ca, other_ca = FulcioCA.generate(), FulcioCA.generate()
    img = image_for("example.com/ns/app:1")
    common: dict[str, Any] = {"manifest_digest": img.manifest_digest, "docker_reference": "example.com/ns/app:1"}

    def policy(**pki: Any) -> Any:
        return parse_policy(json.dumps({"default": [{"type": "sigstoreSigned", "signedIdentity":
                                                     {"type": "matchRepoDigestOrExact"},
                                                     "pki": {"caRootsData": key_data(ca.ca_pem), **pki}}]}))

    by_email = policy(subjectEmail="ci@example.com")
    assert evaluate_policy(by_email, img, [pki_sign_image(ca, **common)]).allowed
    by_host = policy(subjectHostname="build.example.com")
    assert evaluate_policy(by_host, img, [pki_sign_image(ca, **common, dns_names=["*.example.com"])]).allowed
    # intermediates may come from the policy instead of the signature
    inter_pem = ca.intermediate.public_bytes(serialization.Encoding.PEM)
    with_inter = policy(subjectEmail="ci@example.com", caIntermediatesData=key_data(inter_pem))
    assert evaluate_policy(with_inter, img, [pki_sign_image(ca, **common, with_chain=False)]).allowed
    cases = [
        (by_email, pki_sign_image(ca, **common, email="eve@example.com"), "Required email 'ci@example.com' not found"),
        (by_host, pki_sign_image(ca, **common, dns_names=["*.example.com"], email="x@y"), ""),
        (policy(subjectHostname="a.b.example.com"), pki_sign_image(ca, **common, dns_names=["*.example.com"]),
         "Unexpected subject hostname"),
        (by_email, pki_sign_image(ca, **common, at=int(time.time()) - 86400), "veryfing leaf certificate failed"),
        (by_email, pki_sign_image(other_ca, **common), "veryfing leaf certificate failed"),
        (by_email, pki_sign_image(ca, **common, with_chain=False), "veryfing leaf certificate failed"),
        (by_email, pki_sign_image(ca, **common, code_signing=False), "veryfing leaf certificate failed"),
    ]
    for index, (pol, sig, reason) in enumerate(cases):
        decision = evaluate_policy(pol, img, [sig])
        if reason == "":  # hostname policies ignore the e-mail
            assert decision.allowed, decision.reason
            continue
        assert not decision.allowed, index
        assert reason in decision.reason, (index, decision.reason)
