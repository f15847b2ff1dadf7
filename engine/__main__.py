from tether.engine.cli import run

run()
