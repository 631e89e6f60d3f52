"""d365ct: the integration service between Dynamics 365 Finance & Operations and commercetools."""

__version__ = "0.1.0"
