"""The command line and ``[families.<name>]`` tables: fetch loads each family's preload keys.

Every test runs twice, as in test_cli: as a real subprocess and in-process through ``main()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import asgi_refresh
from asgi_refresh._cli import main

# The subprocess runs the package under test, wherever it is imported from (a worktree).
ROOT = str(Path(asgi_refresh.__file__).resolve().parents[1])

RATES_MODULE = """\
import anyio


def items():
    return [1, 2]


def rate(key):
    if key == "XXX":
        raise LookupError(f"no currency {key}")
    return {"currency": key, "rate": 1.25}


async def pair(key):
    await anyio.sleep(0.01)
    return [key, 2]


async def hang(key):
    await anyio.sleep(3600)
"""

CONFIG = """\
[refreshers.items]
source = "python"
target = "cli_rates:items"
every = "1h"

[families.rates]
target = "cli_rates:rate"
every = "1h"
preload = ["EUR", "USD"]

[families.pairs]
target = "cli_rates:pair"
every = "1h"
preload = [["EUR", 3]]

[families.tenants]
target = "cli_rates:rate"
every = "1h"
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def row(self, name: str) -> str:
        return next(line for line in self.out.splitlines() if line.startswith(f"{name} "))


Run = Callable[..., Ran]


@pytest.fixture(params=["subprocess", "in-process"])
def cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run the command line in tmp_path, where the module ``cli_rates`` is, one way or the other."""
    (tmp_path / "cli_rates.py").write_text(RATES_MODULE)

    def subprocess_run(*args: str) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "asgi_refresh", *args],
            cwd=tmp_path,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    def in_process(*args: str) -> Ran:
        monkeypatch.chdir(tmp_path)
        path = list(sys.path)
        capsys.readouterr()
        try:
            code = main(list(args))
        finally:
            sys.path[:] = path
            sys.modules.pop("cli_rates", None)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return subprocess_run if request.param == "subprocess" else in_process


def write(tmp_path: Path, extra: str = "", config: str = CONFIG) -> str:
    (tmp_path / "refresh.toml").write_text(config + extra)
    return "refresh.toml"


def test_fetch_loads_every_preload_key(cli: Run, tmp_path: Path) -> None:
    """`fetch` loads each family's preload keys as startup does: one row per key, shown as the package shows keys."""
    ran = cli("fetch", write(tmp_path))
    assert ran.code == 0, ran.err
    assert ran.row("items").split()[1] == "ok"
    assert ran.row("rates['EUR']").split()[1] == "ok"
    assert '{"currency":"EUR","rate":1.25}' in ran.row("rates['EUR']")
    assert ran.row("rates['USD']").split()[1] == "ok"
    assert ran.row("pairs[('EUR', 3)]").split()[2] == "ok"
    assert '[["EUR",3],2]' in ran.row("pairs[('EUR', 3)]")
    assert "4 ok, 0 failed" in ran.out


def test_a_family_without_preload_keys_has_nothing_to_fetch(cli: Run, tmp_path: Path) -> None:
    """A family without preload keys is listed, saying its keys load when requests ask: not counted."""
    ran = cli("fetch", write(tmp_path), "tenants")
    assert ran.code == 0, ran.err
    assert ran.row("tenants").split()[1:4] == ["-", "-", "-"]
    assert "its keys load when requests ask for them (nothing to fetch)" in ran.row("tenants")
    assert "0 ok, 0 failed" in ran.out


def test_a_required_family_whose_key_fails_makes_the_exit_status_1(cli: Run, tmp_path: Path) -> None:
    """A preload key that fails: FAILED with the fetch's error; required (the default), exit status 1."""
    config = CONFIG.replace('preload = ["EUR", "USD"]', 'preload = ["EUR", "XXX"]')
    ran = cli("fetch", write(tmp_path, config=config))
    assert ran.code == 1
    row = ran.row("rates['XXX']")
    assert row.split()[1] == "FAILED"
    assert "LookupError: no currency XXX" in row
    assert ran.row("rates['EUR']").split()[1] == "ok"
    assert "3 ok, 1 failed; a required family could not preload a key" in ran.out


def test_a_family_that_is_not_required_may_fail(cli: Run, tmp_path: Path) -> None:
    """A family with required = false: its failing key is reported, not fatal."""
    config = CONFIG.replace('preload = ["EUR", "USD"]', 'preload = ["EUR", "XXX"]\nrequired = false')
    ran = cli("fetch", write(tmp_path, config=config))
    assert ran.code == 0, ran.out
    assert ran.row("rates['XXX']").split()[1:4] == ["FAILED", "(not", "required)"]
    assert "3 ok, 1 failed" in ran.out
    assert "required family" not in ran.out


def test_fetch_a_family_by_name_fetches_only_its_preload_keys(cli: Run, tmp_path: Path) -> None:
    """`fetch CONFIG rates`: the family's keys only, no refresher and no other family."""
    ran = cli("fetch", "--json", write(tmp_path), "rates")
    assert ran.code == 0, ran.err
    assert ran.json["refreshers"] == []
    assert [(item["name"], item["key"]) for item in ran.json["families"]] == [
        ("rates", "'EUR'"),
        ("rates", "'USD'"),
    ]
    only_items = cli("fetch", "--json", "refresh.toml", "items")
    assert "families" not in only_items.json, "a refresher named alone loads no family"


def test_fetch_json_lists_the_family_keys(cli: Run, tmp_path: Path) -> None:
    """`fetch --json` has a "families" list: name, key shown, outcome, error, required; a note without keys."""
    config = CONFIG.replace('preload = ["EUR", "USD"]', 'preload = ["EUR", "XXX"]\nrequired = false')
    ran = cli("fetch", "--json", write(tmp_path, config=config))
    assert ran.code == 0, ran.err
    assert ran.json["ok"] is True
    eur, xxx, pair, tenants = ran.json["families"]
    assert set(eur) == {
        "name",
        "key",
        "required",
        "outcome",
        "duration",
        "size",
        "size_of",
        "preview",
        "error",
    }
    assert eur["name"] == "rates"
    assert eur["key"] == "'EUR'"
    assert eur["outcome"] == "ok"
    assert eur["required"] is False
    assert eur["error"] is None
    assert eur["preview"] == '{"currency":"EUR","rate":1.25}'
    assert eur["size_of"] == "JSON"
    assert xxx["outcome"] == "failed"
    assert xxx["error"] == "LookupError: no currency XXX"
    assert xxx["preview"] is None
    assert pair["key"] == "('EUR', 3)"
    assert pair["required"] is True
    assert tenants["key"] is None
    assert tenants["outcome"] == "nothing to fetch"
    assert tenants["required"] is False
    assert "nothing to fetch" in tenants["note"]


def test_fetch_json_is_not_ok_when_a_required_key_fails(cli: Run, tmp_path: Path) -> None:
    """--json: "ok" is false, as the exit status is 1."""
    config = CONFIG.replace('preload = ["EUR", "USD"]', 'preload = ["XXX"]')
    ran = cli("fetch", "--json", write(tmp_path, config=config), "rates")
    assert ran.code == 1
    assert ran.json["ok"] is False
    assert [item["outcome"] for item in ran.json["families"]] == ["failed"]


def test_a_key_that_does_not_load_within_the_timeout_fails(cli: Run, tmp_path: Path) -> None:
    """--timeout bounds the preload keys too: a hung fetch is reported, not waited for."""
    extra = '\n[families.slow]\ntarget = "cli_rates:hang"\nevery = "1h"\npreload = [1]\n'
    ran = cli("fetch", "--json", "--timeout", "300ms", write(tmp_path, extra), "slow")
    assert ran.code == 1
    (item,) = ran.json["families"]
    assert item["key"] == "1"
    assert item["error"] == "no result within 300ms (--timeout)"


def test_no_preview_hides_the_family_values(cli: Run, tmp_path: Path) -> None:
    """--no-preview: no part of a key's value is shown."""
    ran = cli("fetch", "--json", "--no-preview", write(tmp_path), "rates")
    assert [item["preview"] for item in ran.json["families"]] == [None, None]


def test_write_snapshot_says_families_are_not_written(cli: Run, tmp_path: Path) -> None:
    """--write-snapshot writes the refreshers' values; families are never written, and it says so."""
    ran = cli("fetch", write(tmp_path), "--write-snapshot", "snapshots")
    assert ran.code == 0, ran.out
    assert "families are not written to snapshots" in ran.out
    assert sorted(path.name for path in (tmp_path / "snapshots").iterdir()) == ["items.snapshot"]


def test_an_unknown_name_lists_the_families_too(cli: Run, tmp_path: Path) -> None:
    """An unknown NAME lists the families among the known names, and suggests the closest."""
    ran = cli("fetch", write(tmp_path), "rate")
    assert ran.code == 2
    assert ran.err.strip() == (
        "refresh.toml: no refresher or family named 'rate' (known: items, rates, pairs, tenants); "
        "did you mean 'rates'?"
    )


def test_a_config_of_families_only(cli: Run, tmp_path: Path) -> None:
    """Without any refresher, fetch loads the families' keys."""
    config = CONFIG.split("[families.rates]")[1]
    ran = cli("fetch", write(tmp_path, config="[families.rates]" + config))
    assert ran.code == 0, ran.err
    assert "3 ok, 0 failed" in ran.out
