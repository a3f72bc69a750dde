"""Parser plugins, registered by name: decoded packets of one protocol in, records out."""

from otus.plugins.parser.sip import SipConfig, SipParser

__all__ = ["PARSERS", "SipConfig", "SipParser"]

PARSERS: dict[str, type] = {"sip": SipParser}
