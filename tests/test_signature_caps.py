"""Signature reads are capped as containers/image caps them, and an image whose signatures break a cap is not pulled.

c/image ``internal/iolimits``: ``MaxSignatureBodySize`` (4 MiB) for a lookaside signature and for each layer of
a sigstore attachment, ``MaxSignatureListBodySize`` (4 MiB) for the signature API extension's list,
``MaxManifestBodySize`` (4 MiB) for the attachment manifest. The policy here requires signatures (GPG
``signedBy`` for lookaside and the extension, ``sigstoreSigned`` for attachments), so every read happens before
any layer is fetched. Each over-cap answer, with ``Content-Length`` and without one (an endless body), must fail
the pull with one line naming the image, what was read and the cap; the endless body must be abandoned near the
cap (not read to the end); no layer blob is fetched and the store has no image. The cases docker-registry cannot
serve (the extension, HTTP lookaside, a manifest over 4 MiB) come from :mod:`tests.harness.signature_server` in
front of a real docker-registry; the oversized attachment layer is a real blob on docker-registry. A correctly
signed image through the same paths is pulled (the controls), so the failures are the caps'.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.harness import images as factory
from tests.harness.registry import RunningRegistry
from tests.harness.signature_server import ENDLESS_LIMIT, Body, SignatureServer
from tests.harness.signing import CosignKey, GPGSigner, push_sigstore_attachments
from tether.engine.copy.pull import PullReport, pull
from tether.engine.options import CommonOptions
from tether.registry.trust.signature import SigstoreSignature
from tether.store.containers_storage import Store

CAP = 4 * 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE = factory.simple_image(seed=1777, files=2, layers=1)
DIGEST = IMAGE.manifest_digest
LAYER = IMAGE.layers[0].digest
#: case -> (server, repository, what the failure must say it was reading besides the image and the cap); the server
#: is "plain" (lookaside, attachments) or "openshift" (the signature API extension)
CASES = {
    "lookaside-over-cap": ("plain", "gpg/lookaside-big", "signature-1"),
    "lookaside-endless": ("plain", "gpg/lookaside-endless", "signature-1"),
    "extension-over-cap": ("openshift", "gpg/extension-big", "signature list"),
    "extension-endless": ("openshift", "gpg/extension-endless", "signature list"),
    "attachment-manifest-over-cap": ("plain", "cosign/manifest-big", ".sig"),
    "attachment-manifest-endless": ("plain", "cosign/manifest-endless", ".sig"),
    "attachment-layer-over-cap": ("plain", "cosign/layer-big", "sha256:"),
}
CONTROLS = {"lookaside": ("plain", "gpg/lookaside-ok"), "extension": ("openshift", "gpg/extension-ok"),
            "attachment": ("plain", "cosign/attached-ok")}


@dataclass
class World:
    servers: dict[str, SignatureServer]
    policy: Path
    registries_d: Path
    conf: Path

    def name(self, server: str, repo: str) -> str:
        return f"{self.servers[server].host}/{repo}:1"


def _lookaside_path(repo: str) -> str:
    # containers-registries.d(5): <base>/<repository>@<algo>=<hex>/signature-<n>
    return f"/lookaside/{repo}@{DIGEST.replace(':', '=')}/signature-1"


@pytest.fixture(scope="module")
def world(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("signature-caps")
    servers = {"plain": SignatureServer(upstream=registry.host).start(),
               "openshift": SignatureServer(upstream=registry.host, extension=True).start()}
    try:
        for _, repo, *_ in (*CASES.values(), *CONTROLS.values()):
            factory.push_image(registry.host, f"{repo}:1", IMAGE)
        gpg = GPGSigner("tether caps")
        try:
            signed = {kind: gpg.sign_image(manifest_digest=DIGEST, docker_reference=f"{servers[s].host}/{repo}:1")
                      for kind, (s, repo) in CONTROLS.items() if kind != "attachment"}
            gpg_key = gpg.write_public_key(tmp / "gpg.asc")
        finally:
            gpg.close()
        cosign = CosignKey.generate()
        plain, openshift = servers["plain"], servers["openshift"]
        plain.bodies.update({
            _lookaside_path("gpg/lookaside-big"): Body(CAP + 1),
            _lookaside_path("gpg/lookaside-endless"): Body(None, content_length=False),
            _lookaside_path("gpg/lookaside-ok"): Body(0, data=signed["lookaside"]),
            f"/v2/cosign/manifest-big/manifests/{DIGEST.replace(':', '-')}.sig": Body(CAP + 1,
                                                                                      content_type=OCI_MANIFEST),
            f"/v2/cosign/manifest-endless/manifests/{DIGEST.replace(':', '-')}.sig": Body(
                None, content_length=False, content_type=OCI_MANIFEST),
        })
        extension_list = json.dumps({"signatures": [{"schemaVersion": 2, "type": "atomic", "name": "ok",
                                                     "content": base64.b64encode(signed["extension"]).decode()}]})
        openshift.bodies.update({
            f"/extensions/v2/gpg/extension-big/signatures/{DIGEST}": Body(CAP + 1, content_type="application/json"),
            f"/extensions/v2/gpg/extension-endless/signatures/{DIGEST}": Body(None, content_length=False),
            f"/extensions/v2/gpg/extension-ok/signatures/{DIGEST}": Body(0, data=extension_list.encode(),
                                                                           content_type="application/json"),
        })
        # a real attachment whose one layer is a byte over the cap, and a real correct one
        big = SigstoreSignature("application/vnd.dev.cosign.simplesigning.v1+json", b"{" + b" " * CAP + b"}", {})
        push_sigstore_attachments(registry.host, "cosign/layer-big", DIGEST, [big])
        push_sigstore_attachments(registry.host, "cosign/attached-ok", DIGEST, [cosign.sign_image(
            manifest_digest=DIGEST, docker_reference=f"{plain.host}/cosign/attached-ok:1")])

        policy = tmp / "policy.json"
        gpg_rule = [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(gpg_key)}]
        cosign_rule = [{"type": "sigstoreSigned", "keyPath": str(cosign.write_public_key(tmp / "cosign.pub")),
                        "signedIdentity": {"type": "matchRepoDigestOrExact"}}]
        policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
            f"{plain.host}/gpg": gpg_rule, f"{openshift.host}/gpg": gpg_rule, f"{plain.host}/cosign": cosign_rule}}}))
        regd = tmp / "registries.d"
        regd.mkdir()
        (regd / "caps.yaml").write_text(f'docker:\n  "{plain.host}/gpg":\n    lookaside: {plain.lookaside}\n'
                                        f'  "{plain.host}/cosign":\n    use-sigstore-attachments: true\n')
        conf = tmp / "registries.conf"
        conf.write_text("".join(f'[[registry]]\nlocation = "{s.host}"\ninsecure = true\n' for s in servers.values()))
        yield World(servers, policy, regd, conf)
    finally:
        for running in servers.values():
            running.stop()


def _pull(world: World, name: str, tmp: Path) -> tuple[PullReport, Store]:
    options = CommonOptions(root=tmp / "store", runroot=tmp / "run", registries_conf=world.conf,
                            signature_policy=world.policy, registries_d=world.registries_d)
    store = Store.open(tmp / "store", runroot=tmp / "run")
    return trio.run(lambda: pull([name], store=store, options=options)), store


@pytest.mark.parametrize("case", list(CASES))
def test_signatures_over_a_cap_refuse_the_image(world: World, case: str, tmp_path: Path) -> None:
    server, repo, reading = CASES[case]
    name = world.name(server, repo)
    report, store = _pull(world, name, tmp_path)
    (result,) = report.results
    error = result.error
    assert error is not None, f"{case}: pulled"
    assert "\n" not in error and name in error and str(CAP) in error, error
    assert reading in error, error
    assert store.list_images() == [], case
    served = world.servers[server]
    assert served.sent(f"/{repo}/blobs/{LAYER}") == 0, f"{case}: a layer was fetched"
    if case.endswith("endless"):
        sent = max(r.body_bytes for r in served.requests if repo in r.path and r.status == 200
                   and "/blobs/" not in r.path)
        # what the server wrote: the bytes read, plus what loopback socket buffers hold (tens of MiB at most)
        assert sent < ENDLESS_LIMIT // 2, f"{case}: {sent} bytes of an endless body sent: not abandoned at the cap"


@pytest.mark.parametrize("kind", list(CONTROLS))
def test_signatures_under_the_caps_are_verified_and_the_image_pulled(world: World, kind: str,
                                                                     tmp_path: Path) -> None:
    report, store = _pull(world, world.name(*CONTROLS[kind]), tmp_path)
    (result,) = report.results
    assert result.error is None, result.error
    assert [image.id for image in store.list_images()] == [IMAGE.config_digest.split(":", 1)[1]]
