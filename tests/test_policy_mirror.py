"""Signatures through a mirror: ``copy_signatures`` (for ``tether mirror sync``) copies sigstore attachments
and lookaside files to a second real registry; a pull through a registries.conf mirror then reads the
signatures from the *physical* repository that served the image (containers/image semantics), and
podman agrees.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.podman import podman_for
from tests.harness.registry import RunningRegistry
from tests.harness.signing import CosignKey, GPGSigner, push_sigstore_attachments, write_lookaside
from tether.engine.copy.pull import pull
from tether.engine.options import CommonOptions
from tether.registry.auth import load_auth_file
from tether.registry.client import open_registry_client
from tether.registry.reference import Reference
from tether.registry.registries_conf import RegistriesConf
from tether.registry.trust.fetch import copy_signatures, sigstore_attachment_tag
from tether.registry.trust.registries_d import load_registries_d
from tether.store.containers_storage import Store


def _regd(home: Path, text: str) -> Path:
    d = home / ".config/containers/registries.d"
    d.mkdir(parents=True)
    (d / "t.yaml").write_text(text)
    return d


def _podman_outcomes(tmp_path: Path, names: list[str], *, home: Path, conf: Path, policy: Path
                     ) -> dict[str, tuple[int, str]]:
    podman = podman_for(tmp_path / "podman")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CONTAINERS_REGISTRIES_CONF": str(conf)}
    outcomes = {}
    try:
        for name in names:
            proc = subprocess.run([*podman.base(), "pull", "--quiet", "--tls-verify=false", "--signature-policy",
                                   str(policy), name], capture_output=True, text=True, timeout=300, env=env)
            outcomes[name] = (proc.returncode, proc.stderr)
    finally:
        for mounted in (podman.root / "overlay", podman.runroot):
            subprocess.run(["umount", "-R", str(mounted)], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(podman.runroot)], check=False)
    return outcomes


async def test_signatures_copied_to_a_mirror_verify_there(
        registry: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src, mirror = registry.host, registry_factory().host
    image = factory.simple_image(seed=4242, files=1, layers=1)
    digest = image.manifest_digest
    for repo in ("msrc/gpg", "msrc/cosign", "msrc/notcopied"):
        factory.push_image(src, f"{repo}:1", image)
        factory.push_image(mirror, f"{repo}:1", image)
    cosign = CosignKey.generate()
    gpg = GPGSigner("tether mirror")
    try:
        src_lookaside = tmp_path / "src-lookaside"
        write_lookaside(src_lookaside, "msrc/gpg", digest,
                        [gpg.sign_image(manifest_digest=digest, docker_reference=f"{src}/msrc/gpg:1")])
        write_lookaside(src_lookaside, "msrc/notcopied", digest,
                        [gpg.sign_image(manifest_digest=digest, docker_reference=f"{src}/msrc/notcopied:1")])
        gpg_pub = gpg.write_public_key(tmp_path / "gpg.asc")
    finally:
        gpg.close()
    push_sigstore_attachments(src, "msrc/cosign", digest,
                              [cosign.sign_image(manifest_digest=digest, docker_reference=f"{src}/msrc/cosign:1")])
    cosign_pub = cosign.write_public_key(tmp_path / "cosign.pub")
    dst_lookaside = tmp_path / "mirror-lookaside"

    # copy, with a registries.d that knows both sides
    copy_home = tmp_path / "copy-home"
    _regd(copy_home, f'docker:\n  "{src}/msrc":\n    lookaside: {src_lookaside.as_uri()}\n'
                     f'    use-sigstore-attachments: true\n'
                     f'  "{mirror}/msrc":\n    lookaside: {dst_lookaside.as_uri()}\n'
                     f'    use-sigstore-attachments: true\n')
    regd = load_registries_d(home=str(copy_home))
    async with open_registry_client(registries=RegistriesConf(), auth=load_auth_file(None), tls_verify=False) as client:
        for repo in ("msrc/gpg", "msrc/cosign"):
            copied = await copy_signatures(
                source_client=client, source_repository=Reference(src, repo, "1"), dest_client=client,
                dest_repository=Reference(mirror, repo, "1"), manifest_digest=digest, registries_d=regd)
            if repo == "msrc/gpg":
                assert copied.lookaside == 1 and copied.sigstore_attachment is None
            else:
                assert copied.lookaside == 0 and copied.sigstore_attachment == sigstore_attachment_tag(digest)
    assert (dst_lookaside / f"msrc/gpg@sha256={digest.split(':')[1]}" / "signature-1").read_bytes() == \
        (src_lookaside / f"msrc/gpg@sha256={digest.split(':')[1]}" / "signature-1").read_bytes()

    # pull through the mirror: only the mirror's signature stores are configured now
    pull_home = tmp_path / "pull-home"
    _regd(pull_home, f'docker:\n  "{mirror}/msrc":\n    lookaside: {dst_lookaside.as_uri()}\n'
                     f'    use-sigstore-attachments: true\n')
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{src}"\ninsecure = true\n'
                    f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n')
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{src}/msrc/cosign": [{"type": "sigstoreSigned", "keyPath": str(cosign_pub),
                                "signedIdentity": {"type": "matchRepoDigestOrExact"}}],
        f"{src}/msrc": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(gpg_pub)}],
    }}}))
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    monkeypatch.setenv("HOME", str(pull_home))  # registries.d is found through $HOME, as by podman
    options = CommonOptions(root=tmp_path / "store", runroot=tmp_path / "run", storage_driver="overlay",
                            registries_conf=conf, authfile=auth, tls_verify=False, signature_policy=policy,
                            environ={"PATH": "/usr/bin:/bin", "HOME": str(pull_home)})
    names = [f"{src}/msrc/gpg:1", f"{src}/msrc/cosign:1", f"{src}/msrc/notcopied:1"]
    report = await pull(names, store=Store.open(options.root, runroot=options.runroot, driver="overlay"),
                        options=options)
    gpg_result, cosign_result, notcopied = report.results
    assert gpg_result.ok, gpg_result.error
    assert cosign_result.ok, cosign_result.error
    # signed at the source only: the mirror that served it has no signature
    assert "A signature was required, but no signature exists" in (notcopied.error or "")

    outcomes = _podman_outcomes(tmp_path, names, home=pull_home, conf=conf, policy=policy)
    assert outcomes[names[0]][0] == 0, outcomes[names[0]]
    # Debian's podman refuses sigstore only after finding (and parsing) the attachment on the mirror
    assert outcomes[names[1]][0] == 0 or "sigstore disabled" in outcomes[names[1]][1], outcomes[names[1]]
    assert outcomes[names[2]][0] != 0
    assert "A signature was required, but no signature exists" in outcomes[names[2]][1]
