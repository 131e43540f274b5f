"""The content-addressed store: keys, atomic publish, corruption handling, locking, gc."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from dsetool.store import Result, Store, make_key


def build_text(text: str):
    def build(out):
        (out / "a.txt").write_text(text)
        return Result({"n": len(text)})
    return build


def test_key_is_pinned():
    """The key depends only on the canonical JSON of the inputs: the same on every machine."""
    key = make_key("pretrain", {"version": "1", "config": {"seed": 0, "b": [1, 2.5]}, "upstream": {}})
    assert key == "c43bd5d49f038cac9c0323b5ac86c935258f1a1fc230df58897f57aab15c34e4"


def test_key_ignores_dict_order():
    assert make_key("s", {"a": 1, "b": {"c": 2, "d": 3}}) == make_key("s", {"b": {"d": 3, "c": 2}, "a": 1})
    assert make_key("s", {"a": 1}) != make_key("t", {"a": 1})


def test_compute_then_hit(tmp_path):
    store = Store(tmp_path)
    calls = []

    def build(out):
        calls.append(1)
        return build_text("hello")(out)

    entry, cached = store.compute("s", "ab" * 32, {"x": 1}, build)
    again, cached_again = store.compute("s", "ab" * 32, {"x": 1}, build)
    assert (cached, cached_again, len(calls)) == (False, True, 1)
    assert again.artifact("a.txt").read_text() == "hello"
    assert again.manifest["artifacts"]["a.txt"]["bytes"] == 5
    assert again.metrics == {"n": 5}


def test_failed_build_leaves_nothing(tmp_path):
    store = Store(tmp_path)

    def build(out):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.compute("s", "cd" * 32, {}, build)
    assert store.get("s", "cd" * 32) is None
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_dir() and p.name.startswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "delete"])
def test_corrupt_entry_is_reported_and_recomputed(tmp_path, damage):
    warnings = []
    store = Store(tmp_path, warn=warnings.append)
    key = "ef" * 32
    entry, _ = store.compute("s", key, {}, build_text("payload"))
    artifact = entry.path / "a.txt"
    if damage == "truncate":
        artifact.write_text("pay")
    elif damage == "flip":
        artifact.write_text("PAYLOAD")
    elif damage == "manifest":
        (entry.path / "manifest.json").write_text("{not json")
    else:
        artifact.unlink()
    assert store.get("s", key) is None
    assert warnings and "corrupt" in warnings[0]
    _, cached = store.compute("s", key, {}, build_text("payload"))
    assert cached is False


def test_leftover_tmp_dir_is_never_read(tmp_path):
    store = Store(tmp_path)
    key = "12" * 32
    stale = store.entry_dir("s", key).parent / f".tmp-{key}-999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "a.txt").write_text("half")
    assert store.get("s", key) is None
    entry, cached = store.compute("s", key, {}, build_text("full"))
    assert not cached and entry.artifact("a.txt").read_text() == "full"


def _slow_writer(root, key, started):
    def build(out):
        started.set()
        time.sleep(1.0)
        (out / "a.txt").write_text("first")
        return Result({"who": "first"})
    Store(root).compute("s", key, {}, build)


def test_concurrent_writers_compute_once(tmp_path):
    key = "34" * 32
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_slow_writer, args=(tmp_path, key, started))
    proc.start()
    started.wait(10)
    entry, cached = Store(tmp_path).compute("s", key, {}, build_text("second"))
    proc.join(10)
    assert cached and entry.metrics == {"who": "first"}


def test_gc_keeps_indexed_entries_and_their_upstream(tmp_path):
    store = Store(tmp_path)
    up, _ = store.compute("up", "aa" * 32, {}, build_text("u"))
    down, _ = store.compute("down", "bb" * 32, {"upstream": {"up": up.key}}, build_text("d"))
    orphan, _ = store.compute("down", "cc" * 32, {}, build_text("o"))
    store.record_point("exp", "exp.yaml", "base", {}, {"down": down.key})
    assert store.gc(dry_run=True) == [f"down/{orphan.key}"]
    assert store.get("down", orphan.key) is not None
    assert store.gc() == [f"down/{orphan.key}"]
    assert store.get("down", orphan.key) is None
    assert store.get("up", up.key) is not None and store.get("down", down.key) is not None
    index = json.loads(store.index_path("exp").read_text())
    assert index["points"]["base"]["keys"] == {"down": down.key}
