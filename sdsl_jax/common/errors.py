"""The errors shared across layers.

An error lives here when more than one layer raises it and a caller (the CLI)
catches it without caring which layer it came from. Errors that belong to one
module (a laws file, a measurement set) stay in that module.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, malformed or does not fit the model.

    Raised for the directories ``sdsl train`` writes (``models.store``) and for
    Hugging Face safetensors checkpoints (``hf``); the message names the file,
    key or tensor at fault.
    """
