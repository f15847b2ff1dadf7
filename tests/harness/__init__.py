"""Test harness: real docker-registry processes and an OCI image factory."""
