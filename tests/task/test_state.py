"""The state file: atomic saves, tolerant loads."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from otus.core.errors import ConfigError
from otus.task.state import SavedTask, StateFile


def test_roundtrip_atomic_private(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "sub" / "state.json")
    assert sf.load() == ([], [])
    tasks = [
        SavedTask(spec={"id": "a"}, created_at=1.0),
        SavedTask(
            spec={"id": "b"}, desired="stopped", state="failed", reason="boom", stats={"x": 2}
        ),
    ]
    sf.save(tasks)
    assert stat.S_IMODE(sf.path.stat().st_mode) == 0o600
    assert [p.name for p in sf.path.parent.iterdir()] == ["state.json"]  # no temp file left
    loaded, problems = sf.load()
    assert loaded == tasks and problems == []
    sf.save(tasks[:1])
    assert [t.spec["id"] for t in sf.load()[0]] == ["a"]


def test_bad_entries_are_reported_not_fatal(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    p.write_text(json.dumps({"version": 1, "tasks": [{"spec": {"id": "ok"}}, {"nospec": 1}, 3]}))
    loaded, problems = StateFile(p).load()
    assert [t.spec["id"] for t in loaded] == ["ok"]
    assert len(problems) == 2


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    p.write_text('{"tasks": [')
    with pytest.raises(ConfigError, match="corrupt"):
        StateFile(p).load()
    assert not p.exists()
    assert [x.name.startswith("state.json.corrupt-") for x in tmp_path.iterdir()] == [True]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"tasks": ' + "[" * 100_000, "nested too deeply"),
        ('{"tasks": [], "saved_at": ' + "9" * 5000 + "}", "an integer has more than 4300 digits"),
    ],
    ids=["deep", "huge-int"],
)
def test_unparsable_file_is_moved_aside(tmp_path: Path, text: str, why: str) -> None:
    p = tmp_path / "state.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"corrupt \\({why}\\)"):
        StateFile(p).load()
    assert not p.exists()
    assert [x.name.startswith("state.json.corrupt-") for x in tmp_path.iterdir()] == [True]
