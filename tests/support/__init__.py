"""Helpers shared by the whole test suite (on ``sys.path`` through pytest's ``pythonpath``)."""
