"""Sub-commands of the ``d365ct`` CLI, one Typer app per module (``jobs``, …).

``d365ct.cli`` mounts them; each reads the configuration itself so it can run on its own.
"""
