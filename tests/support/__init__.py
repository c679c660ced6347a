"""Helpers the tests import by name; fixtures live in the conftest files instead."""
