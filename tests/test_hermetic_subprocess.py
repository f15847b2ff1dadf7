"""tether *subprocesses* read none of the host's container configuration when run as the tests run them.

The ``hermetic`` fixture's audit hook sees what the test process opens; a ``python -m tether`` child is out of its
reach, and relocating defaults by monkeypatching works in-process only. So real ``tether pull`` (a registry
image with a signature policy that reads registries.d and sigstore attachments, and a short name resolved through
unqualified-search registries), ``tether bound sync``, ``tether mirror sync`` and ``tether inspect`` run under
``strace -f -e trace=%file`` with the command lines of :func:`tests.harness.cli.tether_argv`; no path under
``/etc/containers``, ``/etc/docker``, ``/etc/ostree``, ``/run/ostree``, ``/var/cache/containers``,
``/var/lib/containers`` (the default store and lookaside) or the real user's container files may appear, not even
in a ``stat``. A control run of the same pull without the options shows the tracer does see those reads (what
it found without them: certs.d per host, policy.json, registries.conf.d and its files, the short-name alias
cache; for bound sync also bootc's /run, /etc and /usr/lib ostree/auth.json).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FORBIDDEN_PREFIXES
from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import REPO, tether_argv
from tests.harness.registry import RunningRegistry
from tests.harness.signing import CosignKey, push_sigstore_attachments

#: Host paths a test's tether must never touch: the fixture's list, the default stores and the built-in lookaside.
HOST_PATHS = (*FORBIDDEN_PREFIXES, "/var/lib/containers", "/usr/lib/bootc", "/run/bootc")
#: The first path argument of a traced call: ``123 openat(AT_FDCWD, "/etc/x", O_RDONLY) = -1 ENOENT``.
_CALL = re.compile(r'^\s*(?:\[pid\s+)?\d*\]?\s*(\w+)\((?:AT_FDCWD, |\d+<[^>]*>, |-?\d+, )?"([^"]*)"')


def host_reads(trace: Path) -> list[str]:
    """``call path`` of every traced file call naming a :data:`HOST_PATHS` path."""
    found = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if match is None:
            continue
        call, path = match.groups()
        if any(path == prefix or path.startswith(prefix + "/") for prefix in HOST_PATHS):
            found.append(f"{call} {path}")
    return sorted(set(found))


def traced(argv: list[str], trace: Path, *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(trace), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def signed(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, CosignKey]:
    """``HOST/hermetic/app:1``, signed with a cosign key as a sigstore attachment."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (scripts/install-deps.sh installs it)")
    image = factory.simple_image(seed=1717, files=2, layers=1)
    factory.push_image(registry.host, "hermetic/app:1", image)
    key = CosignKey.generate()
    name = f"{registry.host}/hermetic/app:1"
    push_sigstore_attachments(registry.host, "hermetic/app", image.manifest_digest,
                              [key.sign_image(manifest_digest=image.manifest_digest, docker_reference=name)])
    return name, key


def _configure(tmp: Path, host: str, key: CosignKey) -> tuple[Path, Path, Path]:
    """registries.conf (the host insecure, short names searched there), registries.d and a policy requiring the
    cosign signature, which registries.d says to read from sigstore attachments."""
    conf = tmp / "registries.conf"
    conf.write_text(f'unqualified-search-registries = ["{host}"]\nshort-name-mode = "permissive"\n'
                    f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    regd = tmp / "registries.d"
    regd.mkdir()
    # the built-in lookaside is /var/lib/containers/sigstore for root: a test names its own
    (regd / "t.yaml").write_text(f"default-docker:\n  lookaside: {(tmp / 'lookaside').as_uri()}\n"
                                 f'docker:\n  "{host}":\n    use-sigstore-attachments: true\n')
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {host: [
        {"type": "sigstoreSigned", "keyPath": str(key.write_public_key(tmp / "cosign.pub")),
         "signedIdentity": {"type": "matchRepoDigestOrExact"}}]}}}))
    return conf, regd, policy


def test_pull_and_inspect_read_no_host_configuration(signed: tuple[str, CosignKey], registry: RunningRegistry,
                                                     tmp_path: Path) -> None:
    name, key = signed
    conf, regd, policy = _configure(tmp_path, registry.host, key)
    store = ["--root", str(tmp_path / "store"), "--runroot", str(tmp_path / "run")]
    pull = ["--registries.d", str(regd), "pull", *store, "--registries-conf", str(conf), "--signature-policy",
            str(policy),
            "--progress", "none", name, "hermetic/app:1"]

    # control: without the options, the tracer sees the child read the host's files
    bare = traced([sys.executable, "-m", "tether", *pull], tmp_path / "bare.trace")
    assert bare.returncode == 0, bare.stderr
    seen = host_reads(tmp_path / "bare.trace")
    for expected in ("/etc/containers/registries.conf.d", "/etc/containers/certs.d/" + registry.host,
                     "/var/cache/containers/short-name-aliases.conf"):
        assert any(read.endswith(" " + expected) for read in seen), (expected, seen)

    done = traced(tether_argv(*pull), tmp_path / "pull.trace")
    assert done.returncode == 0, done.stderr
    reads = host_reads(tmp_path / "pull.trace")
    assert not reads, reads
    inspected = traced(tether_argv("inspect", "--registries-conf", str(conf), "--no-tags", f"docker://{name}"),
                       tmp_path / "inspect.trace")
    assert inspected.returncode == 0, inspected.stderr
    reads = host_reads(tmp_path / "inspect.trace")
    assert not reads, reads


def test_bound_and_mirror_sync_read_no_host_configuration(signed: tuple[str, CosignKey],
                                                          registry: RunningRegistry, tmp_path: Path) -> None:
    name, key = signed
    conf, regd, policy = _configure(tmp_path, registry.host, key)
    root = make_root(tmp_path / "deployment", {"app.image": name})
    sync = ["--registries.d", str(regd), "bound", "sync", "--deployment-root", str(root), "--root",
            str(tmp_path / "store"), "--registries-conf", str(conf), "--signature-policy", str(policy),
            "--progress", "none"]
    bare = traced([sys.executable, "-m", "tether", *sync], tmp_path / "bare.trace")
    assert bare.returncode == 0, bare.stderr
    assert any(read.endswith(" /etc/ostree/auth.json") for read in host_reads(tmp_path / "bare.trace"))
    shutil.rmtree(tmp_path / "store")

    done = traced(tether_argv(*sync), tmp_path / "sync.trace")
    assert done.returncode == 0, done.stdout + done.stderr
    reads = host_reads(tmp_path / "sync.trace")
    assert not reads, reads
    mirrored = traced(tether_argv("--registries.d", str(regd), "mirror", "sync", "--registries-conf", str(conf),
                                  "--signature-policy", str(policy), "--to", f"oci:{tmp_path / 'layout'}", name),
                      tmp_path / "mirror.trace")
    assert mirrored.returncode == 0, mirrored.stderr
    reads = host_reads(tmp_path / "mirror.trace")
    assert not reads, reads


def test_the_relocating_options_are_read(registry: RunningRegistry, tmp_path: Path) -> None:
    """``--registries-conf-dir``'s drop-in (the registry insecure) and ``--short-name-alias-conf``'s alias are what
    make this pull work; before the verb or after it alike."""
    factory.push_image(registry.host, "hermetic/alias:1", factory.simple_image(seed=1718, files=1, layers=1))
    conf = tmp_path / "registries.conf"
    conf.write_text('short-name-mode = "enforcing"\n')
    dropins = tmp_path / "conf.d"
    dropins.mkdir()
    (dropins / "50-test.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    aliases = tmp_path / "aliases.conf"
    aliases.write_text(f'[aliases]\n"hermetic/alias" = "{registry.host}/hermetic/alias"\n')
    store = ["--root", str(tmp_path / "store"), "--runroot", str(tmp_path / "run")]
    located = ["--registries-conf-dir", str(dropins), "--short-name-alias-conf", str(aliases)]
    for argv in (tether_argv(*located, "pull", *store, "--registries-conf", str(conf), "hermetic/alias:1"),
                 tether_argv("pull", *store, "--registries-conf", str(conf), *located, "--policy", "always",
                             "hermetic/alias:1")):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stderr
    # without them: no alias (enforcing mode, no TTY) and no insecure registry
    refused = subprocess.run(tether_argv("pull", *store, "--registries-conf", str(conf), "hermetic/alias:1"),
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert refused.returncode != 0
    refused = subprocess.run(tether_argv("pull", *store, "--registries-conf", str(conf), "--short-name-alias-conf",
                                         str(aliases), "--policy", "always", "hermetic/alias:1"),
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert refused.returncode != 0 and "mark the registry insecure" in refused.stderr, refused.stderr
