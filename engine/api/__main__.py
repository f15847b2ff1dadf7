"""``python -m tether``: the ``tether`` command."""

from tether.engine.cli.main import run

run()
