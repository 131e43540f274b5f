"""The content-addressed `runs/` store: every stage result lives under a key derived from its inputs.

Layout: `runs/<stage>/<key[:2]>/<key>/` holds `manifest.json` (inputs, metrics, timings, versions and a
sha256 of every artifact) plus the artifacts. A result is built in a temporary directory beside its final
place and published with one `os.rename`, under a per-key file lock, so concurrent sweeps can share a
store and a killed process never leaves anything that reads as valid. A corrupt or half-written entry is
reported, removed and recomputed. Experiment indexes under `runs/experiments/<name>/index.json` name the
keys of each design point; `gc` keeps exactly what they (and the upstream keys of those entries) reach.
This is the only module that knows paths under `runs/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
INDEX = "index.json"
EXPERIMENTS = "experiments"
CACHE = "cache"   # builds shared by the keys of a stage (`Store.cache_dir`)
Warn = Callable[[str], None]


def canonical_json(payload: Any) -> str:
    """Serialize with sorted keys and no whitespace, so equal inputs give equal bytes on any machine."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def make_key(stage: str, payload: dict[str, Any]) -> str:
    """Return the store key of `stage` run on `payload` (config subset, upstream keys, code version)."""
    return hashlib.sha256(canonical_json({"stage": stage, **payload}).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """Hash a file in chunks (artifacts can be large checkpoints)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CorruptEntry(Exception):
    """An entry whose manifest or artifacts do not match; never used, always recomputed."""


@dataclass(frozen=True)
class Entry:
    """A finished, verified stage result."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """Return the metrics the stage recorded."""
        return dict(self.manifest.get("metrics", {}))

    def artifact(self, name: str) -> Path:
        """Return the path of a named artifact, which the manifest guarantees exists."""
        if name not in self.manifest.get("artifacts", {}):
            raise KeyError(f"{self.stage}/{self.key[:12]} has no artifact {name!r}")
        return self.path / name


@dataclass
class Result:
    """What a stage function hands back: metrics plus extra manifest fields (e.g. timings)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Store:
    """A content-addressed result store rooted at one directory (default `runs/`)."""

    def __init__(self, root: str | Path = "runs", warn: Warn | None = None) -> None:
        self.root = Path(root)
        self.warn = warn or (lambda message: None)

    def entry_dir(self, stage: str, key: str) -> Path:
        """Return where the entry for (stage, key) lives once published."""
        return self.root / stage / key[:2] / key

    def get(self, stage: str, key: str) -> Entry | None:
        """Return the verified entry, or None when absent; a corrupt entry is reported and removed."""
        path = self.entry_dir(stage, key)
        if not path.exists():
            return None
        try:
            return self._verified(stage, key, path)
        except CorruptEntry as exc:
            self.warn(f"store: {stage}/{key[:12]} is corrupt ({exc}); recomputing")
            with self._lock(stage, key):
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
            return None

    def _verified(self, stage: str, key: str, path: Path) -> Entry:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"unreadable manifest: {type(exc).__name__}") from None
        if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("stage") != stage:
            raise CorruptEntry("manifest names another entry")
        for name, meta in manifest.get("artifacts", {}).items():
            artifact = path / name
            if not artifact.is_file() or artifact.stat().st_size != meta.get("bytes"):
                raise CorruptEntry(f"artifact {name} missing or truncated")
            if file_sha256(artifact) != meta.get("sha256"):
                raise CorruptEntry(f"artifact {name} checksum mismatch")
        return Entry(stage, key, path, manifest)

    def compute(self, stage: str, key: str, inputs: dict[str, Any],
                build: Callable[[Path], Result]) -> tuple[Entry, bool]:
        """Return (entry, cached): the existing entry, or the one `build(tmpdir)` produces.

        `build` writes its artifacts into the temporary directory it is given; the manifest, checksums
        and the atomic publish are done here. A failure in `build` leaves nothing behind.
        """
        found = self.get(stage, key)
        if found is not None:
            return found, True
        with self._lock(stage, key):
            found = self.get(stage, key)  # another process may have finished it while we waited
            if found is not None:
                return found, True
            return self._build(stage, key, inputs, build), False

    def _build(self, stage: str, key: str, inputs: dict[str, Any], build: Callable[[Path], Result]) -> Entry:
        final = self.entry_dir(stage, key)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            started = time.time()
            result = build(tmp)
            manifest = {
                "stage": stage, "key": key, "inputs": inputs, "metrics": result.metrics,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.time() - started, 3), **result.extra,
                "artifacts": _checksums(tmp),
            }
            _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            if final.exists():  # a corrupt leftover; we hold the lock, so nobody is reading it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(stage, key, final, manifest)

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / f"{key}.lock"

    def _lock(self, stage: str, key: str) -> contextlib.AbstractContextManager[None]:
        return _locked(self._lock_path(stage, key))

    def scratch_dir(self, stage: str, key: str) -> Path:
        """Return a per-key directory that survives a crash, for checkpoints a rerun resumes from."""
        path = self.entry_dir(stage, key).parent / f".partial-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cache_dir(self, stage: str) -> Path:
        """Return a directory a stage shares between its keys for what many keys can reuse (compiled
        simulators, say), keyed inside by content; never listed as entries, safe to delete."""
        return self.root / CACHE / stage   # made by whoever writes into it

    def drop_scratch(self, stage: str, key: str) -> None:
        """Remove the scratch directory once the entry is published."""
        shutil.rmtree(self.entry_dir(stage, key).parent / f".partial-{key}", ignore_errors=True)

    # ---- listing and experiment indexes -------------------------------------------------------

    def entries(self) -> Iterator[Entry]:
        """Yield every verified entry (corrupt ones are reported and skipped)."""
        if not self.root.is_dir():
            return
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name not in (EXPERIMENTS, CACHE)):
            for path in sorted(stage_dir.glob("??/*")):
                if path.is_dir() and not path.name.startswith("."):
                    entry = self.get(stage_dir.name, path.name)
                    if entry is not None:
                        yield entry

    def find(self, prefix: str) -> list[Entry]:
        """Return the entries whose key starts with `prefix`."""
        return [e for e in self.entries() if e.key.startswith(prefix)]

    def experiment_dir(self, experiment: str) -> Path:
        """Return the folder of an experiment's index and report (created by whoever writes into it)."""
        return self.root / EXPERIMENTS / experiment

    def index_path(self, experiment: str) -> Path:
        """Return the index file of an experiment."""
        return self.experiment_dir(experiment) / INDEX

    def read_index(self, experiment: str) -> dict[str, Any]:
        """Return an experiment's index (empty when it has none yet)."""
        try:
            data = json.loads(self.index_path(experiment).read_text())
        except (OSError, ValueError):
            return {"experiment": experiment, "points": {}}
        return data if isinstance(data, dict) else {"experiment": experiment, "points": {}}

    def record_point(self, experiment: str, source: str, label: str, axes: dict[str, Any],
                     keys: dict[str, str], complete: bool | None = None) -> None:
        """Add the stage keys of one design point to its experiment's index (atomically)."""
        self.record_points(experiment, source, [(label, axes, keys, complete)])

    def record_points(self, experiment: str, source: str,
                      updates: list[tuple[str, dict[str, Any], dict[str, str], bool | None]]) -> None:
        """Merge (label, axes, keys, complete) of several design points into the index in one atomic write.

        Keys are merged, so a sweep can record each finished stage of a point at once (and `gc` spares it)
        before the point's last stage is done; `complete` (when not None) says whether every stage is in.
        """
        with self.experiment_lock(experiment):
            index = self.read_index(experiment)
            for label, axes, keys, complete in updates:
                point = index.setdefault("points", {}).setdefault(label, {"axes": axes, "keys": {}})
                point["axes"] = axes
                point["keys"].update(keys)
                if complete is not None:
                    point["complete"] = complete
            index.update(experiment=experiment, source=source,
                         updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            path = self.index_path(experiment)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{INDEX}.{os.getpid()}.tmp")
            _write_synced(tmp, json.dumps(index, indent=2, sort_keys=True))
            os.replace(tmp, path)

    def experiment_lock(self, experiment: str) -> contextlib.AbstractContextManager[None]:
        """Hold the experiment folder's lock (its index and its report are each written by one process)."""
        return _locked(self.index_path(experiment).with_name(".lock"))

    def experiments(self) -> list[str]:
        """Return the names of experiments that have an index."""
        base = self.root / EXPERIMENTS
        return sorted(p.parent.name for p in base.glob(f"*/{INDEX}")) if base.is_dir() else []

    def gc(self, dry_run: bool = False) -> list[str]:
        """Remove entries no experiment index reaches, and stale temporary dirs; return what went."""
        keep = self._reachable()
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for stage_dir in (p for p in self.root.iterdir() if p.is_dir() and p.name != EXPERIMENTS):
            for path in stage_dir.glob("??/*"):
                if not path.is_dir():
                    continue
                key = _key_of(path.name)
                if path.name == key and key in keep:
                    continue
                if not self._idle(stage_dir.name, key):
                    continue  # a live writer holds it
                removed.append(f"{stage_dir.name}/{path.name}")
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
        return sorted(removed)

    def _reachable(self) -> set[str]:
        todo = [key for name in self.experiments()
                for point in self.read_index(name).get("points", {}).values()
                for key in point.get("keys", {}).values()]
        seen: set[str] = set()
        manifests = {p.parent.name: p for p in self.root.glob(f"*/??/*/{MANIFEST}")}
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            with contextlib.suppress(OSError, ValueError, KeyError):
                todo.extend(json.loads(manifests[key].read_text())["inputs"].get("upstream", {}).values())
        return seen

    def _idle(self, stage: str, key: str) -> bool:
        lock_path = self._lock_path(stage, key)
        if not lock_path.exists():
            return True
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock; the kernel releases it if the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key_of(name: str) -> str:
    """Return the key a directory name belongs to (`.tmp-<key>-…`, `.partial-<key>` or `<key>`)."""
    for prefix in (".tmp-", ".partial-"):
        if name.startswith(prefix):
            return name[len(prefix):].split("-")[0]
    return name


def _checksums(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST:
            out[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
