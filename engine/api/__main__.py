"""``python -m tether``: the ``tether`` command."""

from tether.engine.cli import run

run()
