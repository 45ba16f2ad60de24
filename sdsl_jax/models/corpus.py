"""The training text: Python's standard library by default, plus any text a user names.

Every machine that runs this package has a Python standard library, so the
default corpus needs no download and is real text this project did not write
(code, docstrings and comments by many authors). Users add their own files or
directories with ``paths``.

Documents are split into train and validation by a hash of their relative
name, never by position, so:
  * the split is the same on every machine and every run (no seed involved),
  * a document is wholly on one side: validation text is never trained on,
  * adding files does not move existing files across the split.

Each side is one token array (``tokenizer.BOS`` then the document's bytes, for
each document in name order), kept in memory as uint16; training draws random
windows from it on the device (:func:`sample_windows`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.models import tokenizer

DEFAULT_VALIDATION_FRACTION = 0.05
# Tests are mostly fixtures and generated data; site-packages is not the stdlib.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                               "__pycache__"})
_STDLIB_SUFFIXES = (".py", ".txt", ".rst")
_BINARY_PROBE = 8192


class CorpusError(ValueError):
    """A corpus that cannot be built as asked (missing path, nothing to split)."""


@dataclasses.dataclass(frozen=True)
class Document:
    """A text file: ``name`` (relative, "/"-separated, decides the split) and ``path``."""

    name: str
    path: str


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Train and validation tokens (uint16, BOS before each document) and their provenance.

    Attributes:
      train, validation: token arrays, disjoint by document.
      train_documents, validation_documents: document names on each side, sorted.
      fingerprint: sha256 over names, sides and contents; a resumed run checks it.
    """

    train: np.ndarray
    validation: np.ndarray
    train_documents: tuple[str, ...]
    validation_documents: tuple[str, ...]
    fingerprint: str

    def summary(self) -> dict:
        return {"fingerprint": self.fingerprint,
                "train_documents": len(self.train_documents),
                "validation_documents": len(self.validation_documents),
                "train_tokens": int(self.train.size),
                "validation_tokens": int(self.validation.size)}


def stdlib_documents() -> list[Document]:
    """The .py, .txt and .rst files of the running interpreter's standard library."""
    root = sysconfig.get_paths()["stdlib"]
    documents = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _STDLIB_SKIP_DIRS and not d.startswith(".")]
        for file in files:
            if file.endswith(_STDLIB_SUFFIXES):
                path = os.path.join(directory, file)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                documents.append(Document("stdlib/" + rel, path))
    return documents


def _looks_binary(path: str) -> bool:
    with open(path, "rb") as handle:
        return b"\0" in handle.read(_BINARY_PROBE)


def user_documents(paths) -> list[Document]:
    """Documents for user-named files (taken as they are) and directories.

    A directory contributes every file under it except hidden ones and files
    with a NUL byte in their first 8 KiB (binary); names are relative to the
    directory's parent, so ``books/a.txt`` keeps its side of the split
    wherever ``books`` lives.
    """
    documents = []
    for given in paths:
        path = os.path.abspath(os.path.expanduser(str(given)))
        if os.path.isfile(path):
            documents.append(Document(os.path.basename(path), path))
        elif os.path.isdir(path):
            parent = os.path.dirname(path.rstrip(os.sep)) or path
            for directory, subdirs, files in os.walk(path):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                for file in files:
                    full = os.path.join(directory, file)
                    if file.startswith(".") or not os.path.isfile(full) or _looks_binary(full):
                        continue
                    documents.append(Document(os.path.relpath(full, parent).replace(os.sep, "/"),
                                              full))
        else:
            raise CorpusError(f"corpus path {given} does not exist (or is not a file or directory)")
    return documents


def _unit_hash(name: str) -> float:
    """A uniform number in [0, 1) fixed by the name alone."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_documents(documents, validation_fraction: float = DEFAULT_VALIDATION_FRACTION):
    """(train, validation): lists of documents, sorted by name, disjoint.

    A document is validation when the hash of its name falls below
    ``validation_fraction``. With two or more distinct names each side gets at
    least one: if the hash leaves a side empty, the name nearest the threshold
    crosses over, which is still a function of the names alone.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise CorpusError(f"validation fraction must lie in (0, 1), got {validation_fraction}")
    unique = {}
    for doc in documents:  # the same file named twice counts once
        unique.setdefault(os.path.realpath(doc.path), doc)
    docs = sorted(unique.values(), key=lambda d: (d.name, d.path))
    names = sorted({d.name for d in docs})
    if len(names) < 2:
        raise CorpusError(f"the corpus has {len(names)} distinct document(s); the train/validation "
                          "split is by document, so name at least two files or a directory")
    hashes = {name: _unit_hash(name) for name in names}
    validation_names = {name for name in names if hashes[name] < validation_fraction}
    if not validation_names:
        validation_names = {min(names, key=hashes.get)}
    elif len(validation_names) == len(names):
        validation_names.discard(max(names, key=hashes.get))
    train = [d for d in docs if d.name not in validation_names]
    validation = [d for d in docs if d.name in validation_names]
    return train, validation


def _tokens(documents, digest) -> np.ndarray:
    parts = []
    for doc in documents:
        with open(doc.path, "rb") as handle:
            data = handle.read()
        digest.update(doc.name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big") + data)
        parts.append(np.array([tokenizer.BOS], np.uint16))
        parts.append(np.frombuffer(data, np.uint8).astype(np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def load_corpus(paths=(), *, include_stdlib: bool = True,
                validation_fraction: float = DEFAULT_VALIDATION_FRACTION) -> Corpus:
    """The corpus of the standard library (unless ``include_stdlib=False``) and ``paths``."""
    documents = (stdlib_documents() if include_stdlib else []) + user_documents(paths)
    if not documents:
        raise CorpusError("the corpus is empty: name text files or directories, "
                          "or keep the standard library")
    train_docs, validation_docs = split_documents(documents, validation_fraction)
    digest = hashlib.sha256()
    train = _tokens(train_docs, digest)
    digest.update(b"\0validation\0")
    validation = _tokens(validation_docs, digest)
    return Corpus(train=train, validation=validation,
                  train_documents=tuple(d.name for d in train_docs),
                  validation_documents=tuple(d.name for d in validation_docs),
                  fingerprint=digest.hexdigest())


def sample_windows(tokens: jax.Array, key: jax.Array, batch_size: int, window: int) -> jax.Array:
    """``batch_size`` windows of ``window`` consecutive tokens at uniform random offsets.

    Pure and jit-compatible, so a training step draws its own batch on the
    device from ``fold_in(key, step)``: the batch of every step is fixed by the
    seed and the step, which is what makes a resumed run repeat the same data.

    Returns:
      int32[batch_size, window].
    """
    if tokens.shape[0] < window:
        raise CorpusError(f"the training text has {tokens.shape[0]} tokens, fewer than one "
                          f"window of {window}; lower the sequence length")
    offsets = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - window + 1)
    return tokens[offsets[:, None] + jnp.arange(window)].astype(jnp.int32)


def evaluation_windows(tokens: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    """Up to ``max_windows`` non-overlapping windows spread evenly over ``tokens``.

    Deterministic, so every model of a family is scored on the same text.

    Returns:
      int32[n, window] with 1 <= n <= max_windows.
    """
    n = min(max_windows, tokens.shape[0] // window)
    if n < 1:
        raise CorpusError(f"the validation text has {tokens.shape[0]} tokens, fewer than one "
                          f"window of {window}; lower the sequence length or add validation text")
    stride = tokens.shape[0] // n
    offsets = np.arange(n) * stride
    return tokens[offsets[:, None] + np.arange(window)].astype(np.int32)
