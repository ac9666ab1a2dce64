"""Command-line programs of greenmim that are not training loops (those live in greenmim.engine).

Each module has `main(argv=None) -> int`, the target of a console script declared in
pyproject.toml, and a script under tools/ with the same behaviour for checkouts.
"""
