"""Start-up of ``sdsl measure --teacher-forced`` on the tiny pair, cold and warm.

    python benchmarks/bench_measure_start.py [--repeats 3] [--models DIR] [--baseline DIR]

Whole processes, as a user runs them, timed from the parent: wall clock and
the child's CPU time (user + system, steadier on a shared machine). The pair
is ``DIR/10k`` (draft) and ``DIR/30k`` (target) of ``sdsl train --family
tiny``; without ``--models`` a pair is trained first (quality does not
matter here: 60 steps). Each repeat runs, in turn, for this tree and (with
``--baseline DIR``, a folder holding an older ``sdsl_jax/``, e.g. from ``git
archive COMMIT | tar -x -C DIR``) the older one, interleaved:

* cold: ``--documents 16`` of the held-out standard library (the README's
  command) with ``SDSL_COMPILATION_CACHE`` on a new, empty folder;
* warm: the same command again on a folder an earlier identical call filled;
* warm, other sizes: ``--documents 3``, then ``--prompt-file`` with 5 short
  lines, on the folder that only the 16-document call and a 7-line prompt
  file filled: what bucketing shapes buys (the same program for another
  number of documents or windows, not a new compilation; 5 and 7 windows
  share a batch of 8 rows, 9 would take one of 16). Each runs in that
  folder itself, which is then put back as it was: the cache's keys name
  its folder, so a copy of it elsewhere would miss every entry.

It prints medians and minima, the ratio of ours to the baseline (medians),
and the machine's load average before and after. The programs each call
compiles are listed by ``JAX_LOG_COMPILES=1 sdsl measure ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from process_timing import timed

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_pair(python, folder, env) -> str:
    """A tiny 10k/30k pair in ``folder`` (60 steps of sdsl train: enough to run, not to be good)."""
    subprocess.run([python, "-m", "sdsl_jax.cli", "train", "--family", "tiny", "--sizes", "10k",
                    "30k", "--steps", "60", "--checkpoint-every", "60", "--batch-size", "8",
                    "--seq-len", "64", "--eval-tokens", "4096", "--out", folder,
                    "--progress", "never"], env=env, check=True, capture_output=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", metavar="DIR", help="holding 10k/ and 30k/ of sdsl train")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a folder holding an older sdsl_jax/ to time beside this one")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    python = sys.executable
    work = tempfile.mkdtemp(prefix="bench_measure_start_")
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("SDSL_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                             "JAX_LOG_COMPILES")}
    trees = {"ours": HERE}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    envs = {name: dict(base_env, PYTHONPATH=tree) for name, tree in trees.items()}
    models = args.models or train_pair(python, os.path.join(work, "models"),
                                       dict(envs["ours"], SDSL_COMPILATION_CACHE="off"))
    lines = ["def f(x):", "    return x + 1", "print(f(41))", "import os",
             "for name in os.listdir('.'):", "    print(name)", "class A:", "    pass",
             "# a comment line"]
    files = {}
    for count in (7, 5):
        files[count] = os.path.join(work, f"prompts{count}.txt")
        with open(files[count], "w") as handle:
            handle.write("\n".join(lines[:count]) + "\n")

    def measure(*extra):
        return [python, "-m", "sdsl_jax.cli", "measure", "--teacher-forced", "--draft",
                os.path.join(models, "10k"), "--target", os.path.join(models, "30k"), "--json",
                *extra]

    readme = measure("--documents", "16")
    others = {"warm, --documents 3": measure("--documents", "3"),
              "warm, 5-line --prompt-file": measure("--prompt-file", files[5])}
    fill = [readme, measure("--prompt-file", files[7])]
    # One warm folder per tree, filled once (each tree's programs are its own).
    warm = {}
    for name in trees:
        warm[name] = os.path.join(work, f"warm-{name}")
        for command in fill:
            timed(command, dict(envs[name], SDSL_COMPILATION_CACHE=warm[name]))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name in trees:
            cold = os.path.join(work, f"cold-{name}-{repeat}")
            results.setdefault((name, "cold, --documents 16"), []).append(
                timed(readme, dict(envs[name], SDSL_COMPILATION_CACHE=cold)))
            shutil.rmtree(cold, ignore_errors=True)
            results.setdefault((name, "warm, --documents 16"), []).append(
                timed(readme, dict(envs[name], SDSL_COMPILATION_CACHE=warm[name])))
            for label, command in others.items():
                # Run in the filled folder itself, then put it back as it was: the
                # cache's keys name its folder (XLA's autotuning cache lives in it),
                # so a copy elsewhere would miss every entry.
                kept = os.path.join(work, f"kept-{name}")
                shutil.copytree(warm[name], kept)
                results.setdefault((name, label), []).append(
                    timed(command, dict(envs[name], SDSL_COMPILATION_CACHE=warm[name])))
                shutil.rmtree(warm[name])
                os.rename(kept, warm[name])
    load_after = os.getloadavg()

    print(f"sdsl measure --teacher-forced, tiny pair ({models}), {args.repeats} repeats, "
          f"seconds: median (min); CPU = the child's user + system")
    labels = list(dict.fromkeys(label for _, label in results))
    header = f"{'':28s}" + "".join(f"{name + ' wall':>18s}{name + ' CPU':>18s}" for name in trees)
    if "baseline" in trees:
        header += f"{'wall ratio':>12s}{'CPU ratio':>11s}"
    print(header)
    for label in labels:
        row = f"{label:28s}"
        medians = {}
        for name in trees:
            walls, cpus, _ = zip(*results[(name, label)])
            medians[name] = (statistics.median(walls), statistics.median(cpus))
            row += (f"{medians[name][0]:10.2f} ({min(walls):5.2f})"
                    f"{medians[name][1]:10.2f} ({min(cpus):5.2f})")
        if "baseline" in trees:
            row += (f"{medians['ours'][0] / medians['baseline'][0]:11.2f}x"
                    f"{medians['ours'][1] / medians['baseline'][1]:10.2f}x")
        print(row)
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}; {os.cpu_count()} cores")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
