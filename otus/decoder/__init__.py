"""L2-L4 decoding: raw frames in, DecodedPackets with the innermost addresses out."""

from otus.decoder.decoder import Decoder
from otus.decoder.options import DecoderOptions

__all__ = ["Decoder", "DecoderOptions"]
