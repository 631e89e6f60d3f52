"""d365sim: a local simulator of the Dynamics 365 Finance & Operations OData and DMF package APIs.

It plays D365's side for d365ct's tests, benchmarks and demo; it shares no code with d365ct.
"""

__version__ = "0.1.0"
