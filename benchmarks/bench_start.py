"""Start-up of ``sdsl plan`` for one target, cold and warm, against the machine's floor.

    python benchmarks/bench_start.py [--repeats 5] [--target-params 70B] [--target-tokens 15T]
                                     [--baseline DIR]

Whole processes, as a user runs them, timed from the parent (wall clock) and
by the children's CPU time (user + system, steadier on a shared machine).
Each repeat runs, in turn:

* ``python -c pass``: the interpreter alone;
* ``python -c "import jax"``: the import every JAX program pays;
* the floor: ``import jax``, the CPU backend, one tiny jitted program loaded
  from a warm persistent compilation cache, and its run. No JAX program that
  uses the cache can start faster; the program ``sdsl plan`` loads is larger,
  so its load costs more than this floor's;
* ``sdsl plan`` warm: ``SDSL_COMPILATION_CACHE`` on a folder an earlier call
  filled (the issue's goal: 2 s);
* ``sdsl plan`` cold: the same on a new, empty folder (everything compiles);
* with ``--baseline DIR`` (a copy of an older tree, e.g. ``git archive
  COMMIT sdsl_jax | tar -x -C DIR``), its ``sdsl plan`` warm and cold too,
  interleaved with ours, each with its own cache folders.

It prints the medians, minima and maxima, the warm call's ratio to the goal
and to the floor, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from process_timing import timed

GOAL_SECONDS = 2.0

FLOOR_PROGRAM = """
import jax
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.jit(lambda x: x + 1.0)(1.0).block_until_ready()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-params", default="70B")
    parser.add_argument("--target-tokens", default="15T")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a folder holding an older sdsl_jax/ to time beside this one")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats: at least 3, for a median")

    python = sys.executable
    plan = [python, "-m", "sdsl_jax.cli", "plan", "--target-params", args.target_params,
            "--target-tokens", args.target_tokens]
    env = {k: v for k, v in os.environ.items()
           if k not in ("SDSL_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    work = tempfile.mkdtemp(prefix="bench_start_")
    warm_cache = os.path.join(work, "warm")
    floor_cache = os.path.join(work, "floor")
    warm_env = dict(env, SDSL_COMPILATION_CACHE=warm_cache)
    floor = [python, "-c", FLOOR_PROGRAM.format(cache=floor_cache)]

    load_before = os.getloadavg()
    # Fill both caches once; the answer of a warm call must equal the cold one.
    _, _, reference = timed(plan, warm_env, work)
    timed(floor, env, work)

    # name -> (command, environment, or a function of the repeat giving it, for the
    # cold calls' new folders)
    cases = {
        "python -c pass": ([python, "-c", "pass"], env),
        "python -c 'import jax'": ([python, "-c", "import jax"], env),
        "floor: jax + one cached program": (floor, env),
        "sdsl plan, warm": (plan, warm_env),
        "sdsl plan, cold": (plan, lambda repeat: dict(
            env, SDSL_COMPILATION_CACHE=os.path.join(work, f"cold{repeat}"))),
    }
    if args.baseline:
        # The older tree's package first on the path, ahead of the installed one
        # (every process runs in the scratch folder, so the working folder that
        # python -m puts first holds no package).
        base = os.path.abspath(args.baseline)
        base_env = dict(env, PYTHONPATH=base)
        base_warm = dict(base_env, SDSL_COMPILATION_CACHE=os.path.join(work, "base_warm"))
        check = [python, "-c", "import sdsl_jax; print(sdsl_jax.__file__)"]
        if not timed(check, base_env, work)[2].startswith(base):
            raise SystemExit(f"--baseline: {base} holds no sdsl_jax/ that Python imports first")
        _, _, base_reference = timed(plan, base_warm, work)
        if base_reference != reference:
            print("note: the baseline's answer differs from ours:\n" + base_reference)
        cases["baseline sdsl plan, warm"] = (plan, base_warm)
        cases["baseline sdsl plan, cold"] = (plan, lambda repeat: dict(
            base_env, SDSL_COMPILATION_CACHE=os.path.join(work, f"base_cold{repeat}")))
    walls = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    names = list(cases)
    for repeat in range(args.repeats):
        # Rotate the order so that no case always follows the heaviest one.
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            command, case_env = cases[name]
            wall, cpu, out = timed(command, case_env(repeat) if callable(case_env) else case_env, work)
            if name.startswith("sdsl plan") and out != reference:
                raise SystemExit(f"{name}: the answer differs from the first call's:\n{out}")
            walls[name].append(wall)
            cpus[name].append(cpu)
    load_after = os.getloadavg()

    print(f"sdsl plan --target-params {args.target_params} --target-tokens {args.target_tokens}: "
          f"whole processes, {args.repeats} repeats interleaved, {os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print()
    print(f"{'':34} {'wall median':>11} {'min':>7} {'max':>7} {'CPU median':>11}")
    for name in names:
        w, c = walls[name], cpus[name]
        print(f"{name:34} {statistics.median(w):10.2f}s {min(w):6.2f}s {max(w):6.2f}s "
              f"{statistics.median(c):10.2f}s")
    warm = statistics.median(walls["sdsl plan, warm"])
    warm_min = min(walls["sdsl plan, warm"])
    floor_wall = statistics.median(walls["floor: jax + one cached program"])
    floor_min = min(walls["floor: jax + one cached program"])
    jax_wall = statistics.median(walls["python -c 'import jax'"])
    cold = statistics.median(walls["sdsl plan, cold"])
    print()
    print(f"warm / goal ({GOAL_SECONDS:.0f} s): {warm / GOAL_SECONDS:.2f} (min {warm_min / GOAL_SECONDS:.2f})")
    print(f"warm / floor: {warm / floor_wall:.2f}; warm - floor: {warm - floor_wall:+.2f} s "
          f"(minima: {warm_min - floor_min:+.2f} s); warm - import jax: {warm - jax_wall:+.2f} s")
    print(f"the floor itself / goal: {floor_wall / GOAL_SECONDS:.2f} "
          f"({'the goal is below the floor' if floor_wall >= GOAL_SECONDS else 'the goal is above the floor'})")
    print(f"cold / warm: {cold / warm:.2f}")
    # On a loaded machine the wall clock mostly measures waiting; CPU time is steadier.
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    print(f"CPU: warm {cpu['sdsl plan, warm']:.2f} s, floor {cpu['floor: jax + one cached program']:.2f} s, "
          f"warm - floor {cpu['sdsl plan, warm'] - cpu['floor: jax + one cached program']:+.2f} s")
    if args.baseline:
        base_warm_wall = statistics.median(walls["baseline sdsl plan, warm"])
        base_cold_wall = statistics.median(walls["baseline sdsl plan, cold"])
        print(f"CPU above the floor, baseline / ours: "
              f"{(cpu['baseline sdsl plan, warm'] - cpu['floor: jax + one cached program']) / (cpu['sdsl plan, warm'] - cpu['floor: jax + one cached program']):.2f}")
        print(f"warm, baseline / ours: {base_warm_wall / warm:.2f} "
              f"(CPU {statistics.median(cpus['baseline sdsl plan, warm']) / statistics.median(cpus['sdsl plan, warm']):.2f}); "
              f"cold, baseline / ours: {base_cold_wall / cold:.2f}")


if __name__ == "__main__":
    main()
