"""``tether inspect``: what ``skopeo inspect`` prints, from tether's own registry client.

The JSON has skopeo's keys (skopeo ``cmd/skopeo/inspect/output.go``: ``Name``, ``Digest``,
``RepoTags``, ``Created``, ``DockerVersion``, ``Labels``, ``Architecture``, ``Variant``, ``Os``,
``Layers``, ``LayersData``, ``Env``), marshalled as Go's ``json.MarshalIndent(.., "", "    ")`` does,
plus ``Endpoint``: the repository actually read (``host/path`` of the mirror or primary that served
the manifest). ``Digest`` is the digest of what the name points at (an index for multi-platform
images), the rest describes the platform's image, as in skopeo.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from tether.engine.cli.gotemplate import NilList, NilMap, parse_template
from tether.engine.cli.images import find_local_image, open_store_if_exists, split_name
from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.image import PullRequest
from tether.engine.copy.sources import open_image_source
from tether.engine.copy.sources.registry import RegistrySource
from tether.engine.copy.sources.storage import StorageSource
from tether.engine.errors import EngineError, UsageError
from tether.engine.options import CommonOptions, common_options_from_args
from tether.registry.manifest import Descriptor, ImageConfig, parse_rfc3339

# image-spec specs-go/v1/config.go field order (what skopeo's --config prints, via c/image OCIConfig)
_OCI_IMAGE_FIELDS = ("created", "author", "architecture", "variant", "os", "os.version", "os.features",
                     "config", "rootfs", "history")
_OCI_CONTAINER_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
                         "StopSignal", "ArgsEscaped")
_OCI_HISTORY_FIELDS = ("created", "created_by", "author", "comment", "empty_layer")
STORAGE_PREFIX = "containers-storage:"


def run_inspect(args: argparse.Namespace) -> int:
    """Run ``tether inspect``; returns the exit status."""
    options = common_options_from_args(args)
    template = parse_template(args.format) if args.format is not None else None
    if template is not None and (args.raw or args.config):
        raise UsageError("inspect: --format applies to the default output, not to --raw or --config")
    if args.image.startswith(STORAGE_PREFIX):
        output = trio.run(lambda: inspect_stored(args.image, options, raw=args.raw, config=args.config))
    else:
        output = trio.run(
            lambda: inspect_image(args.image, options, raw=args.raw, config=args.config,
                                  list_tags=not args.no_tags)
        )
    if template is not None:
        print(template.render(template_fields(json.loads(output))))
        return 0
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return 0


def template_fields(output: Mapping[str, Any]) -> dict[str, object]:
    """The inspect output as skopeo's ``--format`` sees it: its struct's fields, ``Created`` as Go prints a
    ``time.Time`` and nil maps and slices for absent ones."""
    fields: dict[str, object] = {key: output.get(key) for key in (
        "Name", "Digest", "RepoTags", "Created", "DockerVersion", "Labels", "Architecture", "Variant", "Os",
        "Layers", "LayersData", "Env", "Endpoint")}
    fields["Name"] = fields["Name"] or ""
    fields["Variant"] = fields["Variant"] or ""
    fields["Labels"] = fields["Labels"] if isinstance(fields["Labels"], dict) else NilMap()
    fields["Env"] = fields["Env"] if isinstance(fields["Env"], list) else NilList()
    created = output.get("Created")
    if isinstance(created, str):
        try:
            when, nanos = parse_rfc3339(created)
            text = when.strftime("%Y-%m-%d %H:%M:%S") + (f".{nanos:09d}".rstrip("0") if nanos else "")
            offset = when.strftime("%z") or "+0000"
            fields["Created"] = f"{text} {offset} {'UTC' if offset == '+0000' else when.tzname() or ''}".rstrip()
        except ValueError:
            pass
    return fields


def parse_storage_name(text: str) -> tuple[str | None, Path | None, Path | None, str]:
    """``containers-storage:[DRIVER@ROOT+RUNROOT]NAME`` -> (driver, root, runroot, name); the bracketed store
    specifier (c/image storage transport) is optional, its parts too."""
    rest = text.removeprefix(STORAGE_PREFIX)
    driver: str | None = None
    root: Path | None = None
    runroot: Path | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise UsageError(f"{text}: the store specifier has no closing ']'")
        spec, rest = rest[1:end], rest[end + 1:]
        spec = spec.split(":", 1)[0]  # options after ':' are not read here
        if "@" in spec:
            driver, spec = spec.split("@", 1)
        root_text, _, runroot_text = spec.partition("+")
        root = Path(root_text) if root_text else None
        runroot = Path(runroot_text) if runroot_text else None
    if not rest:
        raise UsageError(f"{text}: no image name or id")
    return driver or None, root, runroot, rest


async def inspect_stored(name: str, options: CommonOptions, *, raw: bool = False, config: bool = False) -> bytes:
    """``tether inspect containers-storage:NAME``: an image of a store (``--root``, or the name's own store
    specifier), as skopeo 1.9 shows one: ``Name`` is the repository it was found by (none by id), ``Digest``
    its manifest's, no tags; ``Endpoint`` names the store."""
    driver, root, runroot, text = parse_storage_name(name)
    store_root = root if root is not None else options.root
    store = await trio.to_thread.run_sync(lambda: open_store_if_exists(
        store_root, runroot=runroot or options.runroot, driver=driver or options.storage_driver))
    if store is None:
        raise EngineError(f"inspect {name}: no containers-storage store at {store_root}")
    images = await trio.to_thread.run_sync(store.list_images)
    found = find_local_image(images, text)
    if found is None:
        raise EngineError(f"inspect {name}: image not known in {store.root}")
    record, by_name = found
    source = StorageSource(store=store, record=record, names=record.names)
    top = await source.read_top()
    if raw and not config:
        return top.raw
    image = await source.resolve(platform=None, top=top)
    if config:
        return image.config_raw if raw else go_json(oci_config_view(image.config.raw)) + b"\n"
    repository = split_name(by_name)[0] if by_name else None
    return _inspect_output(name=repository, digest=image.manifest_digest, tags=(), image_config=image.config,
                           layers=image.manifest.layers, endpoint=source.description)


async def inspect_image(
    name: str, options: CommonOptions, *, raw: bool = False, config: bool = False, list_tags: bool = True
) -> bytes:
    """The bytes ``tether inspect`` prints for ``name`` (a registry image, ``oci:`` or ``oci-archive:``), read
    through the copy engine's sources: the same resolution a pull makes."""
    async with AsyncExitStack() as stack:
        clients = RegistryClients(stack, options, connections=4)
        source = await open_image_source(PullRequest(name=name), clients=clients, stack=stack)
        top = await source.read_top()
        if raw and not config:
            return top.raw
        image = await source.resolve(platform=options.wanted_platform(), top=top)
        if config:
            return image.config_raw if raw else go_json(oci_config_view(image.config.raw)) + b"\n"
        if not isinstance(source, RegistrySource):
            # oci:/oci-archive: as skopeo shows them: no Name (no docker reference) and no tags.
            return _inspect_output(name=None, digest=image.digest, tags=(), image_config=image.config,
                                   layers=image.manifest.layers, endpoint=source.description)
        served = image.endpoints[0]
        tags = await source.client.list_tags(served) if list_tags else ()
    return _inspect_output(
        name=source.reference.name,
        digest=image.digest,
        tags=tags,
        image_config=image.config,
        layers=image.manifest.layers,
        endpoint=served.reference.name,
    )


def _inspect_output(
    *, name: str | None, digest: str, tags: Sequence[str], image_config: ImageConfig,
    layers: Sequence[Descriptor], endpoint: str,
) -> bytes:
    # Go marshals a nil map/slice as null and an empty one as {}/[]: keep the config's own distinction
    container = image_config.raw.get("config")
    container = container if isinstance(container, dict) else {}
    out: dict[str, Any] = {}
    if name:  # `json:",omitempty"`
        out["Name"] = name
    out.update({
        "Digest": digest,
        "RepoTags": list(tags),
        "Created": go_time(image_config.raw.get("created")),
        "DockerVersion": image_config.docker_version or "",
        # a Go map: marshalled with its keys sorted
        "Labels": dict(sorted(image_config.labels.items())) if isinstance(container.get("Labels"), dict) else None,
        "Architecture": image_config.architecture,
    })
    if image_config.variant:
        out["Variant"] = image_config.variant
    out["Os"] = image_config.os
    out["Layers"] = [layer.digest for layer in layers]
    out["LayersData"] = [
        {
            "MIMEType": layer.media_type,
            "Digest": layer.digest,
            "Size": layer.size,
            "Annotations": dict(layer.annotations) or None,
        }
        for layer in layers
    ]
    out["Env"] = list(image_config.env) if isinstance(container.get("Env"), list) else None
    out["Endpoint"] = endpoint
    return go_json(out) + b"\n"


def go_time(value: object) -> str | None:
    """An RFC 3339 time re-marshalled as Go's ``time.Time`` does (RFC3339Nano: trailing zeros of the
    fraction dropped, the offset kept, ``Z`` for UTC); None when absent or unparsable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when, nanos = parse_rfc3339(value)
    except ValueError:
        return None
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    offset = when.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    if seconds == 0:
        return text + "Z"
    sign = "+" if seconds > 0 else "-"
    seconds = abs(seconds)
    return f"{text}{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def go_json(value: object) -> bytes:
    """``json.MarshalIndent(value, "", "    ")``: Go escapes <, >, & and U+2028/U+2029 in strings."""
    text = json.dumps(value, indent=4, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def _ordered(obj: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {key: obj[key] for key in fields if key in obj and obj[key] not in (None, "", [], {})}


def oci_config_view(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The config as c/image's ``OCIConfig`` re-marshals it: OCI fields only, in the spec's order."""
    out = _ordered(raw, _OCI_IMAGE_FIELDS)
    if "created" in out:
        out["created"] = go_time(out["created"])
    container = raw.get("config")
    if isinstance(container, Mapping):
        out["config"] = _ordered(container, _OCI_CONTAINER_FIELDS)
    rootfs = raw.get("rootfs")
    if isinstance(rootfs, Mapping):
        out["rootfs"] = {"type": rootfs.get("type", ""), "diff_ids": rootfs.get("diff_ids") or None}
    history = raw.get("history")
    if isinstance(history, list):
        items = []
        for item in history:
            if isinstance(item, Mapping):
                entry = _ordered(item, _OCI_HISTORY_FIELDS)
                if "created" in entry:
                    entry["created"] = go_time(entry["created"])
                items.append(entry)
        out["history"] = items
    # architecture, os, config and rootfs are not omitempty in specs-go (a struct is never omitted)
    out.setdefault("architecture", raw.get("architecture") or "")
    out.setdefault("os", raw.get("os") or "")
    out.setdefault("config", {})
    out.setdefault("rootfs", {"type": "", "diff_ids": None})
    return {key: out[key] for key in _OCI_IMAGE_FIELDS if key in out}
