"""The ``tether`` command line: :mod:`.main` parses and dispatches, one module per verb does the work."""
