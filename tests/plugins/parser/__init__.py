"""Tests of the parser plugins."""
