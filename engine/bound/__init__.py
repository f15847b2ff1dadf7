"""Logically bound images: quadlet discovery, ostree deployments, readiness records, sync, gc and install."""
