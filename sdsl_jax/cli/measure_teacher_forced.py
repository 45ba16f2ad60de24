"""``sdsl measure --teacher-forced``: alpha without a generation loop.

Both models read held-out documents (or the lines of --prompt-file)
teacher-forced, in windows of --prompt-len, and alpha is the mean exact
beta = sum_v min(p, q) over every position, with an interval that
takes documents as clusters (:func:`sdsl_jax.decoding.teacher_forced.teacher_forced_acceptance`).
The result is one measurement row (--rows, --summary, --json) and no runs
file. --dtype and --devices apply as in the loop, and the row records the
precisions, the devices and the peak device memory as the loop's rows do;
--top-k, --top-p and --stop-at-eos are the loop's alone (teacher forcing
samples nothing: see ``sdsl measure``'s checks).
"""

from __future__ import annotations

from sdsl_jax.cli.options import UsageError


def run(args) -> int:
    """Measure alpha teacher-forced and emit its row (the caller turns float64 off)."""
    import time

    import jax
    import numpy as np
    from sdsl_jax.cli.measure import emit
    from sdsl_jax.cli.measure_models import check_memory, check_pair, load_pair
    from sdsl_jax.cli.measure_prompts import corpus_documents, file_prompts
    from sdsl_jax.common.validation import finite_or_none
    from sdsl_jax.decoding.run import peak_memory_bytes, precision
    from sdsl_jax.decoding.summary import teacher_forced_summary
    from sdsl_jax.decoding.teacher_forced import (document_windows, forward_batch_rows,
                                                  teacher_forced_acceptance)

    draft, target = load_pair(args)
    window = 128 if args.prompt_len is None else args.prompt_len
    draft, target = check_pair(draft, target, window, what="the window --prompt-len",
                               lower="--prompt-len")
    if args.prompt_file is None:
        documents, prompt_set = corpus_documents(args, target)
    else:
        documents, prompt_set = file_prompts(args, target)
    vocab = target.decoder.vocab_size
    for i, doc in enumerate(documents):
        if not all(0 <= t < vocab for t in doc):
            raise UsageError(f"sdsl measure: document {i} has a token id outside the models' "
                             f"vocabulary of {vocab} (does the tokenizer belong to them?)")
    if all(len(doc) < 2 for doc in documents):
        raise UsageError("sdsl measure: no document has two tokens: nothing to score")
    temperature = 0.0 if args.greedy else float(args.temperature)
    tokens, lengths, first, ids = document_windows(documents, window)
    check_memory(draft, target, forward_batch_rows(len(tokens), args.batch_size), window,
                 window, lower="--prompt-len or --batch-size")
    begin = time.perf_counter()
    # No key: the interval does not resample, and making one compiles two programs.
    result = teacher_forced_acceptance(
        draft.decoder, target.decoder, tokens, temperature, lengths=lengths,
        first_position=first, document_ids=ids, batch_size=args.batch_size,
        confidence=args.confidence)
    seconds = time.perf_counter() - begin
    extra = {"family": draft.family, "confidence": args.confidence, "prompt_len": window,
             "windows": int(len(tokens)), "seed": args.seed,
             "device": jax.devices()[0].device_kind, "seconds": seconds,
             "draft_document_perplexity": result.draft_perplexity,
             "target_document_perplexity": result.target_perplexity,
             "draft_precision": precision(draft.decoder),
             "target_precision": precision(target.decoder), "devices": args.devices,
             "peak_memory_bytes": peak_memory_bytes()}
    extra["precision"] = (extra["target_precision"]
                          if extra["draft_precision"] == extra["target_precision"] else None)
    row = result.measurement_row(draft_tokens=draft.tokens, target_tokens=target.tokens,
                                 lookahead=1 if args.lookahead is None else args.lookahead,
                                 prompt_set=prompt_set, **extra)
    if draft.kind == "sdsl":
        # The laws' x and y: each model's held-out perplexity from its card,
        # as the loop's rows carry; the per-token ones on these documents stay
        # in *_document_perplexity.
        row.update(draft_perplexity=draft.perplexity, target_perplexity=target.perplexity,
                   perplexity_source="validation")
    else:
        row["perplexity_source"] = "documents"
    row = {key: finite_or_none(value) if isinstance(value, float) else value
           for key, value in row.items()}
    emit(args, row, lambda: teacher_forced_summary(row, np.nanmin(result.document_acceptance),
                                                   np.nanmax(result.document_acceptance)))
    return 0
