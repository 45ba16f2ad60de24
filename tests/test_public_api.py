"""The public API: what ``sdsl_jax`` exports, and one spelling per concept in the library layers.

The spellings (sdsl_jax/__init__.py's docstring): ``hardware``, not
``accelerator``; ``method`` for the planner's solver, not ``solver``;
``batch_size``, not ``batch``; ``num_params`` for an unprefixed parameter
count (``params`` alone would be a weights pytree, which these layers never
take); time fields in ``_seconds``, not ``prefill_s``-style suffixes or no
unit at all. The check reads every public signature and result field of the
layers below the instrument (laws, planning, estimation, fitting) by
introspection, so a new function that strays fails here.
"""

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys

import jax
import pytest

import sdsl_jax as sd

LAYERS = ("laws", "planning", "estimation", "fitting")
RETIRED = {
    "accelerator": "hardware",
    "solver": "method (the planner's bracket|gradient)",
    "batch": "batch_size",
    "params": "num_params (a count) or draft_params/target_params",
    "overhead": "overhead_seconds",
}
# prefill_s, ttft_ms, decode_sec: a time unit spelled short; library containers say _seconds.
SHORT_UNIT = re.compile(r"_(s|ms|us|ns|sec|secs)$")


def retired_spelling(name: str) -> str | None:
    """What ``name`` should be instead, or None if it is fine."""
    if name in RETIRED:
        return RETIRED[name]
    if "accelerator" in name.lower():
        return name.replace("accelerator", "hardware").replace("Accelerator", "Hardware")
    if SHORT_UNIT.search(name):
        return SHORT_UNIT.sub("_seconds", name)
    return None


def _signature_names(fn):
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or a transform without a signature
        return None
    return [name for name, p in signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _field_names(cls):
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return []


def violations(namespace: dict, module_name: str):
    """(where, name, instead) for every retired spelling among the public
    functions, classes, their parameters and fields that ``module_name`` defines."""
    found = []
    for name, obj in namespace.items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        where = f"{module_name}.{name}"
        if retired_spelling(name):
            found.append((where, name, retired_spelling(name)))
        if inspect.isclass(obj):
            members = [(f"{where}.{field}", field) for field in _field_names(obj)]
            for method_name, method in vars(obj).items():
                if not method_name.startswith("_") and inspect.isfunction(method):
                    members += [(f"{where}.{method_name}({p})", p)
                                for p in _signature_names(method) or () if p not in ("self", "cls")]
        elif callable(obj):
            members = [(f"{where}({p})", p) for p in _signature_names(obj) or ()]
        else:
            continue
        found += [(w, p, retired_spelling(p)) for w, p in members if retired_spelling(p)]
    return found


def _library_modules():
    for layer in LAYERS:
        package = importlib.import_module(f"sdsl_jax.{layer}")
        yield package
        for info in pkgutil.iter_modules(package.__path__):
            yield importlib.import_module(f"sdsl_jax.{layer}.{info.name}")


def test_every_exported_name_exists():
    assert len(sd.__all__) == len(set(sd.__all__)), "a name is listed twice in __all__"
    missing = [name for name in sd.__all__ if not hasattr(sd, name)]
    assert not missing, missing
    # The planners and what they need are at the top level.
    for name in ("optimal_draft_size", "optimal_draft_size_wallclock", "evaluate_draft_wallclock",
                 "optimal_draft_under_budget", "Hardware", "Workload", "hardware_preset",
                 "step_time", "calibrate", "Calibration", "read_step_times", "step_time_rows",
                 "plan_sharded", "map_configs", "initialize_distributed"):
        assert name in sd.__all__, name


def test_library_layers_use_one_spelling_per_concept():
    modules = list(_library_modules())
    assert len(modules) > 20  # every module of the four layers was read
    found = [v for module in modules for v in violations(vars(module), module.__name__)]
    assert not found, "\n".join(f"{where}: {name!r} -> {instead}" for where, name, instead in found)


def test_the_check_catches_retired_spellings():
    # The spellings this check retired, as they were: it must flag each.
    def draft_size_interval(laws, target_params, *, method="delta", solver="bracket"):
        """The old signature: the planner's method was ``solver``."""

    def step_time(accelerator, params, tokens_per_step=1.0):
        """The old roofline: ``accelerator`` and an unprefixed ``params`` count."""

    @dataclasses.dataclass(frozen=True)
    class Workload:
        batch: float = 1.0
        context: float = 0.0

    @dataclasses.dataclass(frozen=True)
    class Timing:
        prefill_s: float
        decode_s: float

    class Accelerator:
        pass

    namespace = dict(draft_size_interval=draft_size_interval, step_time=step_time,
                     Workload=Workload, Timing=Timing, Accelerator=Accelerator)
    for obj in namespace.values():
        obj.__module__ = "old"
    flagged = {name for _, name, _ in violations(namespace, "old")}
    assert flagged == {"solver", "accelerator", "params", "batch", "prefill_s", "decode_s",
                       "Accelerator"}
    assert retired_spelling("ttft_ms") == "ttft_seconds" and retired_spelling("draft_params") is None
    assert retired_spelling("batch_size") is None and retired_spelling("step_seconds") is None


def test_public_results_are_frozen_chex_dataclasses():
    classes = [getattr(sd, name) for name in sd.__all__ if inspect.isclass(getattr(sd, name))]
    for cls in classes:
        if issubclass(cls, Exception):
            continue
        assert not issubclass(cls, tuple), f"{cls.__name__} is a NamedTuple"
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls.__name__
        if cls is sd.MeasurementSet:  # host-side rows with names and provenance, not a pytree
            continue
        # A chex dataclass is a pytree of its fields, built by keyword.
        fields = [f.name for f in dataclasses.fields(cls)]
        instance = cls(**{name: float(i) for i, name in enumerate(fields)})
        leaves = jax.tree_util.tree_leaves(instance)
        assert sorted(leaves) == [float(i) for i in range(len(fields))], cls.__name__
        assert instance[fields[0]] == 0.0 and instance.replace(**{fields[0]: 1.0})[fields[0]] == 1.0


def test_import_loads_no_instrument():
    # Importing the package (as the command line's parser does) must not load
    # the measuring instrument, the figures or their heavy dependencies.
    code = ("import sys, sdsl_jax; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flax', 'orbax', 'tokenizers', 'matplotlib') or m.startswith(('sdsl_jax.models', "
            "'sdsl_jax.decoding', 'sdsl_jax.hf', 'sdsl_jax.plots', 'sdsl_jax.reproduce'))); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["Calibration", "WallClockPlan", "BudgetPlan", "DraftPlan"])
def test_results_are_built_by_keyword(name):
    cls = getattr(sd, name)
    with pytest.raises(ValueError, match="positional"):  # chex's mappable dataclasses
        cls(*range(len(dataclasses.fields(cls))))
