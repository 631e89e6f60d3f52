"""A hook module that fails while it is imported (its own bug, reported naming the key)."""

raise RuntimeError("this module is broken")
