"""SIP parser plugin: the plugin class, its config, and the pure message parser."""

from otus.plugins.parser.sip.message import SipParseError, frame_end, looks_like_sip, parse_message
from otus.plugins.parser.sip.parser import SipConfig, SipParser
from otus.plugins.parser.sip.sdp import parse_sdp

__all__ = [
    "SipConfig",
    "SipParseError",
    "SipParser",
    "frame_end",
    "looks_like_sip",
    "parse_message",
    "parse_sdp",
]
