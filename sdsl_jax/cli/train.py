"""``sdsl train``: build the corpus, train each size of a family, print the model cards.

The training is :func:`sdsl_jax.models.training.train_model`, resumable
from its checkpoints. Importing this module is cheap (the parser needs
it); JAX, flax and orbax load only when a run starts.
"""

from __future__ import annotations

import json
import math
import os
import sys

from sdsl_jax.cli.options import PROGRESS, UsageError, add_dtype, check_corpus, check_seed
from sdsl_jax.cli.outputs import check_output_folder, check_outside, make_output_folder


def add_parser(commands) -> None:
    """Register ``train`` on the ``sdsl`` subcommands."""
    train = commands.add_parser("train", help="train a family of byte-level transformers",
                                description=(
        "Train each size of a model family on the default corpus (the Python standard "
        "library) plus any text you name, with checkpoints; rerun to resume after a kill."))
    _add_arguments(train)


def _add_arguments(parser) -> None:
    """The arguments of ``sdsl train``."""
    parser.add_argument("--family", metavar="NAME", help=(
        "family of sizes to train: tiny (tests), small (CPU runs), medium or large "
        "(accelerators); an unknown name lists the known ones"))
    parser.add_argument("--sizes", nargs="+", metavar="SIZE", help=(
        "train these sizes instead of (or, with --family, from) a family, e.g. 10k 1m"))
    parser.add_argument("--steps", type=int, required=True, metavar="N", help="optimizer steps per size")
    parser.add_argument("--out", required=True, metavar="DIR", help=(
        "output directory; each size goes to DIR/SIZE. Rerunning the same command resumes "
        "an interrupted run from its last checkpoint and skips finished sizes"))
    parser.add_argument("--corpus", nargs="+", default=[], metavar="PATH", help=(
        "text files or directories to add to the corpus (default corpus: the Python "
        "standard library's sources and docs)"))
    parser.add_argument("--no-stdlib", action="store_true",
                        help="leave the standard library out of the corpus (needs --corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batches (default: 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step (default: 32)")
    parser.add_argument("--seq-len", type=int, default=256,
                        help="predicted tokens per window (default: 256)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak AdamW learning rate (default: per size)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warmup steps (default: min(steps / 10, 200))")
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="K",
                        help="checkpoint every K steps and at the end (default: 500)")
    parser.add_argument("--eval-tokens", type=int, default=131072,
                        help="held-out tokens for the validation perplexity (default: 131072)")
    parser.add_argument("--validation-fraction", type=float, default=None, help=(
        "share of documents held out, chosen by a hash of their names (default: 0.05)"))
    add_dtype(parser, "the precision of the forward and backward passes (mixed precision: "
                      "weights, optimizer state and checkpoints stay float32)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar (default: auto, on a terminal only)")
    parser.add_argument("--json", action="store_true", help="print the model cards as JSON lines")


# Token positions are int32 on the device, and a step's batch is held at once:
# beyond these a run fails in its first step (or overflows) rather than trains.
MAX_SEQ_LEN = 2**20
MAX_TOKENS_PER_STEP = 2**26


def _sizes(args) -> tuple[str | None, list[str]]:
    from sdsl_jax.models.config import FAMILIES, SIZES, family_sizes
    if args.family is None and not args.sizes:
        raise UsageError("sdsl train: give --family NAME or --sizes SIZE ...")
    family = None
    if args.family is not None:
        try:
            family_sizes(args.family)
        except ValueError:
            raise UsageError(f"sdsl train: argument --family: unknown family {args.family!r} "
                             f"(known: {', '.join(FAMILIES)})") from None
        family = args.family
    sizes = list(args.sizes) if args.sizes else list(FAMILIES[family])
    for size in sizes:
        if size not in SIZES:
            raise UsageError(f"sdsl train: argument --sizes: unknown size {size!r} "
                             f"(known: {', '.join(SIZES)})")
        if family is not None and size not in FAMILIES[family]:
            raise UsageError(f"sdsl train: argument --sizes: {size!r} is not in family "
                             f"{family!r} ({', '.join(FAMILIES[family])})")
    return family, sizes


def _print_cards(cards) -> None:
    from sdsl_jax.common.quantities import format_count as fc
    header = f"{'size':>6}  {'params':>11}  {'non-emb':>11}  {'tokens':>8}  {'val loss':>8}  " \
             f"{'perplexity':>10}  {'bits/byte':>9}  {'tokens/s':>9}  precision"
    print(header)
    for card in cards:
        rate = card.get("tokens_per_second")
        # A card written before the precision was recorded trained in float32.
        print(f"{card['name']:>6}  {card['params']:>11,}  {card['non_embedding_params']:>11,}  "
              f"{fc(card['tokens']):>8}  {card['validation_loss']:>8.4f}  "
              f"{card['perplexity']:>10.4f}  {card['bits_per_byte']:>9.4f}  "
              f"{'-' if rate is None else f'{rate:,.0f}':>9}  {card.get('precision', 'fp32')}")


def run(args) -> int:
    """Run ``sdsl train``; mistakes raise :class:`~sdsl_jax.cli.options.UsageError`."""
    family, sizes = _sizes(args)
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--seq-len", args.seq_len), ("--checkpoint-every", args.checkpoint_every),
                        ("--eval-tokens", args.eval_tokens)):
        if value < 1:
            raise UsageError(f"sdsl train: argument {flag}: must be at least 1, got {value}")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate)
                                               and args.learning_rate > 0):
        raise UsageError(f"sdsl train: argument --learning-rate: must be a finite number > 0, "
                         f"got {args.learning_rate}")
    if args.warmup_steps is not None and not 0 <= args.warmup_steps < args.steps:
        raise UsageError(f"sdsl train: argument --warmup-steps: must lie in [0, --steps) = "
                         f"[0, {args.steps}), got {args.warmup_steps}")
    if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
        raise UsageError(f"sdsl train: argument --validation-fraction: must lie in (0, 1), "
                         f"got {args.validation_fraction}")
    for flag, value, most in (("--seq-len", args.seq_len, MAX_SEQ_LEN),
                              ("--batch-size", args.batch_size, MAX_TOKENS_PER_STEP),
                              ("--eval-tokens", args.eval_tokens, MAX_TOKENS_PER_STEP)):
        if value > most:
            raise UsageError(f"sdsl train: argument {flag}: must be at most {most:,}, got {value}")
    if args.batch_size * args.seq_len > MAX_TOKENS_PER_STEP:
        raise UsageError(f"sdsl train: arguments --batch-size x --seq-len: {args.batch_size} x "
                         f"{args.seq_len} tokens per step is more than {MAX_TOKENS_PER_STEP:,}")
    check_seed("sdsl train", args.seed)
    check_corpus("sdsl train", args.corpus, args.no_stdlib)
    # Checked now, created only once the corpus has loaded: a refused run leaves no folder.
    check_output_folder("sdsl train", "--out", args.out)
    check_outside("sdsl train", "--out", args.out, "--corpus", args.corpus)

    import jax
    from sdsl_jax.models import corpus as corpus_lib, training
    from sdsl_jax.models.store import CheckpointError

    try:
        settings = training.TrainSettings(
            steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
            learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
            checkpoint_every=args.checkpoint_every, eval_tokens=args.eval_tokens,
            dtype=args.dtype)
    except training.TrainingError as err:
        raise UsageError(f"sdsl train: {err}") from None
    fraction = (corpus_lib.DEFAULT_VALIDATION_FRACTION if args.validation_fraction is None
                else args.validation_fraction)
    progress = PROGRESS[args.progress]
    # Never float64, whatever the rest of the CLI runs in (--dtype is the compute precision).
    with jax.enable_x64(False):
        try:
            corpus = corpus_lib.load_corpus(args.corpus, include_stdlib=not args.no_stdlib,
                                            validation_fraction=fraction)
            summary = corpus.summary()
            print(f"corpus: {summary['train_tokens']:,} training tokens in "
                  f"{summary['train_documents']} documents, {summary['validation_tokens']:,} "
                  f"held out in {summary['validation_documents']}", file=sys.stderr)
            make_output_folder("sdsl train", "--out", args.out)
            cards = []
            for size in sizes:
                card = training.train_model(size, corpus, settings, os.path.join(args.out, size),
                                            family=family, progress=progress)
                if card["resumed_from"] is None:
                    print(f"{size}: already trained in {os.path.join(args.out, size)}",
                          file=sys.stderr)
                cards.append(card)
        except (corpus_lib.CorpusError, training.TrainingError, CheckpointError) as err:
            raise UsageError(f"sdsl train: {err}") from None
    if args.json:
        for card in cards:
            print(json.dumps({k: v for k, v in card.items() if k != "resumed_from"}))
    else:
        _print_cards(cards)
    return 0
