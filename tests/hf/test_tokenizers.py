"""Tokenizers of the Llama, Qwen and Pythia families, and whether a draft's and a target's agree.

Each family's tokenizer is built here by its transformers class from a small
BPE trained on a few sentences, and saved with ``save_pretrained``, which
writes ``tokenizer.json`` and ``tokenizer_config.json`` as the hub's uploads
have them. The reference is transformers' own tokenizer loaded back from the
directory: the ids, including the BOS token where the family's
post-processor adds one (Llama 2's ``<s>``, Llama 3's ``<|begin_of_text|>``)
and not where it does not (Qwen, Pythia).
"""

import json
import shutil

import pytest
import tokenizers
import transformers

from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.hf import (CheckpointError, check_shared_tokenizer, load_hf_tokenizer, padded_vocabulary_size,
                         read_tokenizer_vocabulary)

TRAINING_TEXT = ["the draft proposes tokens and the target verifies them in one pass",
                 "speculative decoding accepts a prefix of the drafted tokens", "Hello, world! 123 naïve café"] * 20
TEXTS = ["the draft verifies", " speculative  decoding, Hello!", "unseen wörds ✓ 42\n\nnew   line", ""]


def _byte_level_bpe(specials, vocab_size=400):
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TRAINING_TEXT, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def _qwen():
    vocab, merges = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return transformers.Qwen2Tokenizer(vocab=vocab, merges=merges), None


def _pythia():
    vocab, merges = _byte_level_bpe(["<|endoftext|>", "<|padding|>"])
    return transformers.GPTNeoXTokenizer(vocab=vocab, merges=merges), None


def _llama3():
    vocab, merges = _byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>"])
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos,
                                                eos_token="<|end_of_text|>"), vocab[bos]


def _llama2():
    """SentencePiece-style BPE (metaspace, byte fallback), BOS "<s>" added."""
    bpe = tokenizers.SentencePieceBPETokenizer()
    bpe.train_from_iterator(TRAINING_TEXT, vocab_size=300, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    model = json.loads(bpe._tokenizer.to_str())["model"]
    return transformers.LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                                       add_bos_token=True), model["vocab"]["<s>"]


FAMILIES = {"qwen": _qwen, "pythia": _pythia, "llama3": _llama3, "llama2": _llama2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (directory, BOS id or None)."""
    out = {}
    for family, build in FAMILIES.items():
        tokenizer, bos = build()
        directory = tmp_path_factory.mktemp(family)
        tokenizer.save_pretrained(directory)
        out[family] = (directory, bos)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_tokenizers_match_transformers(saved, family):
    directory, bos = saved[family]
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    ours = load_hf_tokenizer(directory)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == reference(text)["input_ids"], (family, text)
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
        # A BOS token exactly where the model's own post-processor puts one.
        assert (ids[:1] == [bos]) if bos is not None else bos not in ids


def _copy(src, dst):
    dst.mkdir(exist_ok=True)
    for path in src.iterdir():
        shutil.copy(path, dst / path.name)
    return dst


def test_one_tokenizer_in_two_directories_is_shared(saved, tmp_path):
    directory, _ = saved["qwen"]
    shared = check_shared_tokenizer(directory, _copy(directory, tmp_path / "target"))
    vocabulary = read_tokenizer_vocabulary(directory)
    assert shared == vocabulary
    # Ids 0 .. size-1: the trained vocabulary, its special tokens included.
    assert vocabulary.size == len(transformers.AutoTokenizer.from_pretrained(directory))
    assert vocabulary.files == "tokenizer.json"


def test_vocab_and_merges_files_agree_with_their_tokenizer_json(tmp_path):
    """The two file forms of one GPT-2-style tokenizer (OPT uploads carry both) are one tokenizer."""
    vocab, merges = _byte_level_bpe(["<|endoftext|>"])
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "files" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    options = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (tmp_path / "files" / "tokenizer_config.json").write_text(json.dumps(options))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "files")
    reference.save_pretrained(tmp_path / "json")
    assert (tmp_path / "json" / "tokenizer.json").exists()
    shared = check_shared_tokenizer(tmp_path / "files", tmp_path / "json")
    assert shared.files == "vocab.json + merges.txt" and shared.size == len(vocab) == len(reference)


def test_different_tokenizers_are_named(saved, tmp_path):
    with pytest.raises(CheckpointError, match=r"draft and target tokenizers differ: the draft's .*qwen.*tokenizer\.json "
                                              r"has 352 ids \(vocabulary [0-9a-f]{12}\), the target's .*pythia.*"
                                              r"tokenizer\.json has 351 ids \(vocabulary [0-9a-f]{12}\); id 1 is "
                                              r"'<\|im_start\|>' in the draft's and '<\|padding\|>' in the target's\. "
                                              r"Speculative decoding needs one shared tokenizer"):
        check_shared_tokenizer(saved["qwen"][0], saved["pythia"][0])
    # One more special token in the target (the same merges and vocabulary otherwise).
    target = _copy(saved["pythia"][0], tmp_path / "target")
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    tokenizer.save_pretrained(target)
    with pytest.raises(CheckpointError, match=r"has (\d+) ids .* has \d+ ids .*; one has 1 ids more"):
        check_shared_tokenizer(saved["pythia"][0], target)


def test_missing_tokenizer_is_named(saved, tmp_path):
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json, nor vocab\.json with merges\.txt"):
        check_shared_tokenizer(saved["qwen"][0], tmp_path)


def test_padded_vocabulary_size(saved):
    """Qwen2.5-0.5B and -7B: one tokenizer of 151665 ids, 151936 and 152064 embedding rows."""
    vocabulary = read_tokenizer_vocabulary(saved["qwen"][0])

    def model(name, rows):
        return Decoder(params={}, forward=None, init_cache=None, vocab_size=rows, num_params=0, name=name)

    small, large = model("small", vocabulary.size + 3), model("large", vocabulary.size + 9)
    assert padded_vocabulary_size(vocabulary, small, large) == vocabulary.size + 9
    assert padded_vocabulary_size(vocabulary, large, small) == vocabulary.size + 9
    with pytest.raises(CheckpointError, match=rf"the target short has {vocabulary.size - 1} token embeddings but "
                                              rf"its tokenizer .*tokenizer\.json has {vocabulary.size} ids"):
        padded_vocabulary_size(vocabulary, small, model("short", vocabulary.size - 1))
