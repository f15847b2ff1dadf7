"""Benchmarks: tether against podman pull and skopeo on one local registry (see README)."""
