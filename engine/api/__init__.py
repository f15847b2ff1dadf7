"""tether: keep the container images a bootc host binds present in its containers-storage.

This package is the whole product, installed under one name: :mod:`tether.registry` (the OCI distribution
protocol and the host's registry configuration), :mod:`tether.store` (containers-storage and OCI layouts on
disk) and :mod:`tether.engine` (the trio orchestration and the ``tether`` command).
"""

__version__ = "0.1.0"
