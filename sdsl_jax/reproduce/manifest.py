"""The run directory: a manifest of finished stages, and each stage's output as it lands.

Layout of ``DIR``::

  manifest.json       preset, its settings, the corpus, and per stage: finished or not,
                      attempts, seconds
  stages/<stage>.json a finished stage's output (written before the manifest marks it)
  models/<size>/      the trained models (sdsl train's layout: resumable checkpoints)
  train/              loss of every scored checkpoint, one JSON line each
  measure/            per pair: the runs file of `sdsl measure` (one line per prompt),
                      its printed summary; rows.jsonl (one row per pair), teacher_forced.jsonl
  laws.json           the fitted laws (`sdsl plan --laws`, `sdsl plot --laws`)
  latency.jsonl       the latency table of `sdsl plot latency`
  figures/            PNG and PDF of every figure
  report.md           the report

A stage's output is written atomically, then the manifest is replaced
atomically with the stage marked finished, so a run killed at any moment
(kill -9 included) leaves every stage either finished with its output or
not finished; rerunning the same command skips the finished ones and
continues the others from what they had written (checkpoints, runs files).
"""

from __future__ import annotations

import datetime
import json
import os

from sdsl_jax.common.io import read_json, write_json

MANIFEST = "manifest.json"
FORMAT = "sdsl-jax reproduce run"
VERSION = 1


class ReproduceError(ValueError):
    """A run that cannot go ahead as asked; the message says what to change."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunDirectory:
    """A replication's output directory (module doc), tied to one preset and corpus."""

    def __init__(self, root: str, manifest: dict):
        self.root = root
        self._manifest = manifest
        self._lock = None  # the open lock file, held while this object lives (see _lock)

    def close(self) -> None:
        """Release the directory for another run."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def open(cls, root: str, preset: dict, corpus: dict) -> "RunDirectory":
        """Create ``root`` or reopen it to resume.

        Raises:
          ReproduceError: ``root`` is not a writable directory, is a non-empty
            directory of something else, or holds a run of another preset,
            other preset settings or another corpus.
        """
        if os.path.exists(root) and not os.path.isdir(root):
            raise ReproduceError(f"{root} exists and is not a directory")
        try:
            os.makedirs(root, exist_ok=True)
            probe = os.path.join(root, f".write-test-{os.getpid()}")
            with open(probe, "w"):
                pass
            os.unlink(probe)
        except OSError as err:
            raise ReproduceError(f"cannot write to {root}: {err.strerror or err}") from None
        lock = _lock(root)
        try:
            run = cls._open_locked(root, preset, corpus)
        except BaseException:
            lock.close()
            raise
        run._lock = lock
        return run

    @classmethod
    def _open_locked(cls, root: str, preset: dict, corpus: dict) -> "RunDirectory":
        path = os.path.join(root, MANIFEST)
        if os.path.exists(path):
            try:
                manifest = read_json(path)
            except (OSError, json.JSONDecodeError) as err:
                raise ReproduceError(f"{path} is not readable JSON ({err}); choose another "
                                     "directory") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ReproduceError(f"{path} is not the manifest of an `sdsl reproduce` run; "
                                     "choose another directory")
            _check_same(root, manifest, preset, corpus)
            return cls(root, manifest)
        leftovers = [name for name in os.listdir(root) if not name.startswith(".")]
        if leftovers:
            raise ReproduceError(f"{root} is not empty and holds no `sdsl reproduce` run "
                                 f"({MANIFEST} is missing); choose a new or empty directory")
        manifest = {"format": FORMAT, "version": VERSION, "preset": preset["name"],
                    "settings": preset, "corpus": corpus, "created": _now(), "stages": {}}
        run = cls(root, manifest)
        run._save()
        return run

    @property
    def preset_name(self) -> str:
        return self._manifest["preset"]

    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._manifest))

    def path(self, *parts: str) -> str:
        """A path inside the run directory; its folder is created."""
        full = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def stage(self, name: str) -> dict:
        return self._manifest["stages"].get(name, {})

    def finished(self, name: str) -> bool:
        return bool(self.stage(name).get("finished"))

    def output(self, name: str) -> dict:
        """A finished stage's output."""
        if not self.finished(name):
            raise ReproduceError(f"stage {name!r} has not finished in {self.root}")
        return read_json(os.path.join(self.root, "stages", f"{name}.json"))

    def start(self, name: str) -> int:
        """Record an attempt at a stage; returns how many attempts came before."""
        entry = self._manifest["stages"].setdefault(name, {"finished": False, "attempts": 0})
        before = entry["attempts"]
        entry["attempts"] = before + 1
        entry["started"] = _now()
        self._save()
        return before

    def finish(self, name: str, output: dict, seconds: float, **extra) -> None:
        """Write the stage's output, then mark it finished (with ``extra`` facts) in the manifest."""
        write_json(self.path("stages", f"{name}.json"), output)
        entry = self._manifest["stages"].setdefault(name, {"attempts": 1})
        entry.update(finished=True, seconds=round(float(seconds), 3), ended=_now(), **extra)
        self._save()

    def _save(self) -> None:
        write_json(os.path.join(self.root, MANIFEST), self._manifest)


def _lock(root: str):
    """An exclusive lock on ``root/.lock``: two runs writing one directory would train and
    measure over each other. The operating system drops it when the process ends, kill -9
    included, so a killed run never leaves a stale lock."""
    import fcntl
    handle = open(os.path.join(root, ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ReproduceError(f"{root} is in use by another `sdsl reproduce` ({holder}); wait for "
                             "it to finish, or stop it, then rerun") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _check_same(root: str, manifest: dict, preset: dict, corpus: dict) -> None:
    if manifest.get("preset") != preset["name"]:
        raise ReproduceError(f"{root} holds a run of preset {manifest.get('preset')!r}, not "
                             f"{preset['name']!r}; rerun with --preset {manifest.get('preset')} to "
                             "resume it, or choose another --out")
    old = manifest.get("settings", {})
    for key, value in preset.items():
        if json.loads(json.dumps(value)) != old.get(key):
            raise ReproduceError(f"{root} holds a run of preset {preset['name']!r} with {key} = "
                                 f"{old.get(key)!r}, this version of the preset has {value!r}; "
                                 "choose another --out")
    if manifest.get("corpus") != corpus:
        raise ReproduceError(f"{root} holds a run on another corpus ({manifest.get('corpus')}); "
                             "rerun with the same --corpus/--no-stdlib to resume it, or choose "
                             "another --out")
