"""Tests of the SIP parser plugin."""
