from tether.engine.cli.main import run

run()
