"""Fixtures of the report tests (helpers in ``report_store.py``)."""

from report_store import store_factory  # noqa: F401  (the fixture)
