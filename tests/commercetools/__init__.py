"""Tests of the commercetools adapter: pure action builders, the client, and the mock server."""
