"""tether's engine: trio orchestration of pulls, bound images, mirrors and the CLI.

The engine is the only package that knows both :mod:`registry` (the OCI distribution
protocol) and :mod:`store` (containers-storage and OCI layouts); it glues them.
"""
