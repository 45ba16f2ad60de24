"""Byte tokenizer round trips; the corpus split is deterministic, disjoint and held out."""

import hashlib
import os
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.models import corpus as corpus_lib
from sdsl_jax.models import tokenizer


# -- tokenizer ---------------------------------------------------------------------------

def test_tokenizer_round_trips_any_bytes_and_text():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    tokens = tokenizer.encode(data)
    assert tokens.dtype == np.int32 and tokens.shape == (5000,)
    np.testing.assert_array_equal(tokens, np.frombuffer(data, np.uint8))
    assert tokenizer.decode_bytes(tokens) == data
    text = "naïve café — λx. x ≠ 🐍\n\0tab\t"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(text)) == len(text.encode("utf-8"))


def test_bos_is_outside_the_bytes_and_dropped_on_decode():
    tokens = tokenizer.encode("ab", bos=True)
    assert list(tokens) == [tokenizer.BOS, 97, 98]
    assert tokenizer.BOS == 256 and tokenizer.VOCAB_SIZE == 257
    assert tokenizer.decode(tokens) == "ab"
    assert tokenizer.decode([104, 105, tokenizer.BOS, 33]) == "hi!"
    # A model can emit invalid UTF-8; decoding must not fail.
    assert tokenizer.decode([0xFF, 104]) == "\ufffdh"


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([12, 257])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([-1])
    with pytest.raises(TypeError, match="str or bytes"):
        tokenizer.encode(123)


# -- split -------------------------------------------------------------------------------

def _docs(names):
    return [corpus_lib.Document(name, f"/nonexistent/{i}") for i, name in enumerate(names)]


def test_split_is_deterministic_disjoint_and_order_free():
    names = [f"pkg{i % 17}/module_{i}.py" for i in range(3000)]
    train, validation = corpus_lib.split_documents(_docs(names), 0.05)
    train_names = {d.name for d in train}
    validation_names = {d.name for d in validation}
    assert not train_names & validation_names
    assert train_names | validation_names == set(names)
    # A fixed rule: the first 8 bytes of sha256(name) as a fraction of 2^64.
    expected = {n for n in names
                if int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") / 2**64 < 0.05}
    assert validation_names == expected
    # About 5%: binomial sd sqrt(.05 * .95 / 3000) = 0.004; allow 4 sd.
    assert abs(len(validation) / len(names) - 0.05) < 0.016
    shuffled = list(reversed(_docs(names)))
    again_train, again_validation = corpus_lib.split_documents(shuffled, 0.05)
    assert [d.name for d in again_validation] == [d.name for d in validation]
    assert [d.name for d in again_train] == [d.name for d in train]


def test_adding_documents_does_not_move_existing_ones():
    names = [f"a/{i}.txt" for i in range(400)]
    _, validation = corpus_lib.split_documents(_docs(names), 0.1)
    _, validation_more = corpus_lib.split_documents(_docs(names + [f"b/{i}.txt" for i in range(400)]),
                                                    0.1)
    assert {d.name for d in validation} == {d.name for d in validation_more if d.name.startswith("a/")}


def test_split_always_holds_out_something_from_two_or_more_documents():
    for names in (["x.txt", "y.txt"], ["one", "two", "three"]):
        train, validation = corpus_lib.split_documents(_docs(names), 0.05)
        assert len(train) >= 1 and len(validation) >= 1
        assert len(train) + len(validation) == len(names)
    with pytest.raises(corpus_lib.CorpusError, match="at least two"):
        corpus_lib.split_documents(_docs(["only.txt"]), 0.05)
    with pytest.raises(corpus_lib.CorpusError, match="validation fraction"):
        corpus_lib.split_documents(_docs(["a", "b"]), 1.5)


# -- the default corpus: the standard library ---------------------------------------------

@pytest.fixture(scope="module")
def stdlib_corpus():
    return corpus_lib.load_corpus()


def _documents_of(tokens):
    """The documents of a token array, cut at BOS."""
    cuts = np.flatnonzero(tokens == tokenizer.BOS)
    return [tokens[a + 1:b].astype(np.uint8).tobytes()
            for a, b in zip(cuts, list(cuts[1:]) + [tokens.size])]


def test_stdlib_corpus_is_the_standard_library_held_out_by_file(stdlib_corpus):
    c = stdlib_corpus
    root = sysconfig.get_paths()["stdlib"]
    assert len(c.train_documents) > 300 and len(c.validation_documents) > 5
    assert not set(c.train_documents) & set(c.validation_documents)
    names = c.train_documents + c.validation_documents
    assert "stdlib/os.py" in names and "stdlib/json/__init__.py" in names
    assert not any("site-packages" in n or "/test/" in n or "/tests/" in n for n in names)
    # The arrays are exactly BOS + file bytes for each document, side by side.
    for side, docs in ((c.train, c.train_documents), (c.validation, c.validation_documents)):
        assert side.dtype == np.uint16
        contents = _documents_of(side)
        assert len(contents) == len(docs)
        for name in docs[::37]:
            with open(os.path.join(root, name.removeprefix("stdlib/")), "rb") as handle:
                assert contents[docs.index(name)] == handle.read()
    # Held out: no validation text (beyond trivial files like empty __init__.py) is trained on.
    train_texts = {t for t in _documents_of(c.train) if len(t) > 200}
    assert not {t for t in _documents_of(c.validation) if len(t) > 200} & train_texts


def test_corpus_is_deterministic_and_user_text_is_added(stdlib_corpus, tmp_path):
    books = tmp_path / "books"
    (books / "sub").mkdir(parents=True)
    texts = {f"books/ch{i}.txt": (f"chapter {i} " * (50 + i)).encode() for i in range(12)}
    texts["books/sub/notes.md"] = "some notes\n".encode() * 30
    for name, data in texts.items():
        (tmp_path / name).write_bytes(data)
    (books / "image.bin").write_bytes(b"\x89PNG\0\0\x01binary")   # skipped: NUL bytes
    (books / ".hidden.txt").write_text("hidden")                  # skipped: hidden
    single = tmp_path / "extra.txt"
    single.write_text("a file named on its own\n")

    c = corpus_lib.load_corpus([str(books), str(single)], include_stdlib=False,
                               validation_fraction=0.3)
    assert set(c.train_documents + c.validation_documents) == set(texts) | {"extra.txt"}
    assert c.train.size + c.validation.size == sum(len(t) + 1 for t in texts.values()) + 25
    again = corpus_lib.load_corpus([str(single), str(books)], include_stdlib=False,
                                   validation_fraction=0.3)
    assert again.fingerprint == c.fingerprint
    np.testing.assert_array_equal(again.train, c.train)
    # With the standard library the user's files keep their side of the split.
    both = corpus_lib.load_corpus([str(books)], validation_fraction=0.3)
    user_validation = {n for n in both.validation_documents if n.startswith("books/")}
    assert user_validation == {n for n in c.validation_documents if n.startswith("books/")}
    assert both.fingerprint != stdlib_corpus.fingerprint


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(corpus_lib.CorpusError, match="does not exist"):
        corpus_lib.load_corpus([str(tmp_path / "missing.txt")])
    with pytest.raises(corpus_lib.CorpusError, match="empty"):
        corpus_lib.load_corpus([], include_stdlib=False)


# -- batching ----------------------------------------------------------------------------

def test_sample_windows_are_seeded_slices_of_the_text():
    tokens = np.arange(1000, dtype=np.uint16)   # a window of consecutive values is a slice
    draw = jax.jit(corpus_lib.sample_windows, static_argnums=(2, 3))
    a = np.asarray(draw(jnp.asarray(tokens), jax.random.PRNGKey(0), 64, 17))
    b = np.asarray(draw(jnp.asarray(tokens), jax.random.PRNGKey(0), 64, 17))
    c = np.asarray(draw(jnp.asarray(tokens), jax.random.PRNGKey(1), 64, 17))
    assert a.shape == (64, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a, a[:, :1] + np.arange(17))
    assert a.min() >= 0 and a.max() <= 999
    # Offsets cover the whole text (the last valid offset is 1000 - 17).
    many = np.asarray(draw(jnp.asarray(tokens), jax.random.PRNGKey(2), 4096, 17))[:, 0]
    assert many.min() < 20 and many.max() > 1000 - 17 - 20 and many.max() <= 1000 - 17
    with pytest.raises(corpus_lib.CorpusError, match="fewer than one window"):
        corpus_lib.sample_windows(jnp.zeros(5, jnp.uint16), jax.random.PRNGKey(0), 2, 9)


def test_evaluation_windows_do_not_overlap():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = corpus_lib.evaluation_windows(tokens, 33, 20)
    assert windows.shape == (20, 33)
    starts = windows[:, 0]
    assert np.all(np.diff(starts) >= 33)
    np.testing.assert_array_equal(windows, starts[:, None] + np.arange(33))
    assert corpus_lib.evaluation_windows(tokens, 33, 10_000).shape == (1000 // 33, 33)
    with pytest.raises(corpus_lib.CorpusError, match="validation text"):
        corpus_lib.evaluation_windows(tokens[:10], 33, 4)
