"""The byte-level tokenizer every draft and target shares: no vocabulary file, no download.

A token is a byte (0..255) or ``BOS`` (256), which marks the start of a
document. Draft and target must share one tokenizer for acceptance to be
defined (theory, section 1); bytes make that true of every model this project
trains, whatever its size, and decoding never fails: any byte string round
trips exactly.
"""

from __future__ import annotations

import numpy as np

BYTE_VOCAB = 256
BOS = 256
VOCAB_SIZE = 257


def encode(text: str | bytes, *, bos: bool = False) -> np.ndarray:
    """Tokens of ``text`` (UTF-8 bytes of a str), int32[n] (n + 1 with ``bos``)."""
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise TypeError(f"encode: expected str or bytes, got {type(text).__name__}")
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    return np.concatenate([np.array([BOS], np.int32), tokens]) if bos else tokens


def decode_bytes(tokens) -> bytes:
    """The bytes of ``tokens``, specials (BOS) dropped; raises on ids outside the vocabulary."""
    ids = np.asarray(tokens).ravel()
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"decode: token ids must be integers, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= VOCAB_SIZE)
    if bad.any():
        raise ValueError(f"decode: token id {int(ids[bad][0])} is outside the vocabulary "
                         f"[0, {VOCAB_SIZE})")
    return ids[ids < BYTE_VOCAB].astype(np.uint8).tobytes()


def decode(tokens, errors: str = "replace") -> str:
    """``tokens`` as text; a model may emit bytes that are not valid UTF-8, hence ``errors``."""
    return decode_bytes(tokens).decode("utf-8", errors=errors)
