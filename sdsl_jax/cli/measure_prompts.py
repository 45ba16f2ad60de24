"""The text ``sdsl measure`` decodes: prompts for the loop, documents for teacher forcing.

Both come from the held-out side of the corpus (the same documents ``sdsl
train`` held out, given the same --corpus/--no-stdlib/--validation-fraction)
or from the lines of --prompt-file. Loop prompt ``i`` is the held-out window
at an offset drawn from (--seed, i) alone
(:func:`sdsl_jax.decoding.run.prompt_windows`), so a larger --prompts keeps
the prompts a run measured. Each function returns token lists in the
target's tokenizer and the prompt set's name, which a runs file records.
"""

from __future__ import annotations

import hashlib
import sys

from sdsl_jax.cli.measure_models import Model
from sdsl_jax.cli.options import UsageError


def _load_corpus(args):
    from sdsl_jax.models import corpus as corpus_lib
    fraction = (corpus_lib.DEFAULT_VALIDATION_FRACTION if args.validation_fraction is None
                else args.validation_fraction)
    try:
        return corpus_lib.load_corpus(args.corpus, include_stdlib=not args.no_stdlib,
                                      validation_fraction=fraction)
    except corpus_lib.CorpusError as err:
        raise UsageError(f"sdsl measure: {err}") from None


def _note_other_corpus(model: Model, corpus, what: str) -> None:
    if model.corpus_fingerprint and model.corpus_fingerprint != corpus.fingerprint:
        print(f"note: the {what} come from a different corpus than {model.name} was trained on "
              "(pass the same --corpus/--no-stdlib as to `sdsl train` to draw held-out text "
              "of that corpus)", file=sys.stderr)


def _corpus_prompts(args, model: Model, count: int, length: int):
    """Windows of held-out text; window i depends on (seed, i) alone."""
    import numpy as np
    from sdsl_jax.decoding.run import prompt_windows
    from sdsl_jax.models import tokenizer
    corpus = _load_corpus(args)
    # A Hugging Face tokenizer reads text: take enough bytes for `length` tokens.
    width = length if model.kind == "sdsl" else 8 * length
    prompts = []
    for i, window in enumerate(prompt_windows(corpus.validation, count, width, args.seed)):
        if model.kind == "sdsl":
            prompts.append(window.astype(np.int64).tolist())
            continue
        ids = model.encode(tokenizer.decode(np.where(window == tokenizer.BOS, 10, window)))
        if len(ids) < length:
            raise UsageError(f"sdsl measure: prompt {i}: {width} bytes of held-out text give only "
                             f"{len(ids)} tokens, fewer than --prompt-len {length}")
        prompts.append(ids[:length])
    _note_other_corpus(model, corpus, "prompts")
    return prompts, f"corpus:{corpus.fingerprint[:16]}"


def file_prompts(args, model: Model):
    """(token lists, prompt-set name): the first --prompts (or --documents) lines of
    --prompt-file, all by default."""
    from sdsl_jax.common.tables import InputFileError, decode_text, read_bytes
    try:
        data = read_bytes(args.prompt_file)
        # UTF-8, a byte-order mark dropped (it is not part of the first prompt);
        # Latin-1, UTF-16 or binary is one line naming the file and line.
        content = decode_text(data, args.prompt_file)
    except InputFileError as err:
        raise UsageError(f"sdsl measure: argument --prompt-file: {err}") from None
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"sdsl measure: argument --prompt-file: {args.prompt_file} has no prompts")
    flag, asked = (("--documents", args.documents) if args.teacher_forced
                   else ("--prompts", args.prompts))
    count = len(lines) if asked is None else asked
    if count > len(lines):
        raise UsageError(f"sdsl measure: argument {flag}: {args.prompt_file} has only "
                         f"{len(lines)} lines, {count} asked for")
    prompts = [model.encode(line) for line in lines[:count]]
    # The name hashes the text as it was read before the byte-order mark was
    # dropped (newlines as Python's text mode gives them), so that a run
    # resumed on the same file keeps its prompt set.
    as_before = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    digest = hashlib.sha256(as_before.encode("utf-8")).hexdigest()
    return prompts, f"file:{digest[:16]}"


def loop_prompts(args, model: Model):
    """(prompts as token lists, the prompt set's name, the padded prompt length)."""
    if args.prompt_file is None:
        length = 128 if args.prompt_len is None else args.prompt_len
        return (*_corpus_prompts(args, model, args.prompts, length), length)
    prompts, prompt_set = file_prompts(args, model)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    length = len(prompts[longest]) if args.prompt_len is None else args.prompt_len
    if len(prompts[longest]) > length:
        raise UsageError(f"sdsl measure: prompt {longest} has {len(prompts[longest])} tokens, "
                         f"more than --prompt-len {length}")
    if any(not p for p in prompts):
        raise UsageError("sdsl measure: argument --prompt-file: a prompt has no tokens")
    return prompts, prompt_set, length


def corpus_documents(args, model: Model):
    """(token lists, prompt-set name): whole held-out documents, a --seed draw of
    --documents of them (in name order), or all."""
    import numpy as np
    from sdsl_jax.models import tokenizer
    corpus = _load_corpus(args)
    text = corpus.validation
    # Each document is BOS followed by its bytes (sdsl_jax.models.corpus).
    starts = np.flatnonzero(text == tokenizer.BOS).tolist() + [text.size]
    total = len(starts) - 1
    count = total if args.documents is None else args.documents
    if count > total:
        raise UsageError(f"sdsl measure: argument --documents: the held-out text has "
                         f"{total} documents, {count} asked for")
    chosen = range(total) if count == total else sorted(
        np.random.default_rng(args.seed).choice(total, count, replace=False).tolist())
    documents = []
    for i in chosen:
        piece = text[starts[i]:starts[i + 1]]
        if model.kind == "sdsl":
            documents.append(piece.astype(np.int64).tolist())
        else:  # a Hugging Face tokenizer reads the text (without our BOS)
            documents.append(model.encode(tokenizer.decode(piece)))
    _note_other_corpus(model, corpus, "documents")
    return documents, f"corpus:{corpus.fingerprint[:16]}"
