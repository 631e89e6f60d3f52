"""Pure mapping between D365 records and commercetools drafts: no I/O, no clock, no globals.

One module per concern (skus, inventory, …); flows call them, tests exercise them directly.
"""
