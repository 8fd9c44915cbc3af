"""The command line and ``[derived.<name>]`` tables: check lists them, fetch computes them.

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

SHOP_MODULE = """\
def products():
    return [{"id": "a"}, {"id": "b"}]


def prices():
    return {"a": 1.5}


def down():
    raise OSError("upstream down")


def catalog(products, prices):
    return {item["id"]: prices.get(item["id"]) for item in products}


def count(catalog):
    return len(catalog)


def explode(products):
    raise ValueError("bad data")


def in_stock(stock, prices):
    return [name for name in stock if name in prices]
"""

CONFIG = """\
[refreshers.products]
source = "python"
target = "cli_shop:products"
every = "1h"

[refreshers.prices]
source = "python"
target = "cli_shop:prices"
every = "1h"

[derived.catalog]
compute = "cli_shop:catalog"
inputs = ["products", "prices"]

[derived.count]
compute = "cli_shop:count"
inputs = ["catalog"]
timeout = "5s"
required = false
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Ran]


@pytest.fixture(params=["subprocess", "in-process"])
def cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run the command line in tmp_path, where the module ``cli_shop`` is, one way or the other."""
    (tmp_path / "cli_shop.py").write_text(SHOP_MODULE)

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
            sys.modules.pop("cli_shop", None)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return subprocess_run if request.param == "subprocess" else in_process


def write(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "refresh.toml").write_text(CONFIG + extra)
    return "refresh.toml"


# -- check ----------------------------------------------------------------------------------


def test_check_lists_the_derived_values(cli: Run, tmp_path: Path) -> None:
    """Check counts the derived values and lists name, inputs, compute and required after the refreshers."""
    ran = cli("check", write(tmp_path))
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0] == "refresh.toml: valid, 2 refreshers, 2 derived values"
    assert lines[2].split() == ["NAME", "SOURCE", "SCHEDULE", "REQUIRED"]
    assert lines[6].split() == ["DERIVED", "INPUTS", "COMPUTE", "REQUIRED"]
    assert lines[7].split() == ["catalog", "products,", "prices", "cli_shop:catalog", "yes"]
    assert lines[8].split() == ["count", "catalog", "cli_shop:count", "no"]


def test_check_json_lists_the_derived_values(cli: Run, tmp_path: Path) -> None:
    """`check --json` has a "derived" list: name, inputs, the compute's import string, timeout, required."""
    ran = cli("check", "--json", write(tmp_path))
    assert ran.code == 0, ran.err
    assert ran.json["derived"] == [
        {
            "name": "catalog",
            "inputs": ["products", "prices"],
            "compute": "cli_shop:catalog",
            "timeout": 10.0,
            "required": True,
        },
        {
            "name": "count",
            "inputs": ["catalog"],
            "compute": "cli_shop:count",
            "timeout": 5.0,
            "required": False,
        },
    ]
    assert [item["name"] for item in ran.json["refreshers"]] == ["products", "prices"]


def test_check_json_has_no_derived_key_without_derived_values(cli: Run, tmp_path: Path) -> None:
    """A configuration without [derived] tables reports as before: no "derived" key, no count."""
    config = CONFIG.split("[derived.catalog]")[0]
    (tmp_path / "refresh.toml").write_text(config)
    assert "derived" not in cli("check", "--json", "refresh.toml").json
    assert cli("check", "refresh.toml").out.splitlines()[0] == "refresh.toml: valid, 2 refreshers"


# -- fetch ----------------------------------------------------------------------------------


def test_fetch_computes_the_derived_values_from_what_it_fetched(cli: Run, tmp_path: Path) -> None:
    """`fetch` computes each derived value from the values it fetched, and says it was computed."""
    ran = cli("fetch", write(tmp_path))
    assert ran.code == 0, ran.err
    rows = {line.split()[0]: line for line in ran.out.splitlines()[1:] if line.strip()}
    assert rows["products"].split()[1] == "ok"
    assert rows["catalog"].split()[1:3] == ["ok", "(computed)"]
    assert '{"a":1.5,"b":null}' in rows["catalog"]
    assert rows["count"].split()[1:3] == ["ok", "(computed)"]
    assert "4 ok, 0 failed" in ran.out


def test_fetch_json_lists_the_derived_values_apart(cli: Run, tmp_path: Path) -> None:
    """`fetch --json` keeps "refreshers" for fetches and lists computes under "derived", with their inputs."""
    ran = cli("fetch", "--json", write(tmp_path))
    assert ran.code == 0, ran.err
    assert ran.json["ok"] is True
    assert [item["name"] for item in ran.json["refreshers"]] == ["products", "prices"]
    catalog, count = ran.json["derived"]
    assert catalog["name"] == "catalog"
    assert catalog["outcome"] == "ok"
    assert catalog["computed_from"] == ["products", "prices"]
    assert catalog["preview"] == '{"a":1.5,"b":null}'
    assert count["preview"] == "2"
    assert count["required"] is False


def test_fetch_a_derived_name_fetches_its_inputs(cli: Run, tmp_path: Path) -> None:
    """`fetch NAME` of a derived value fetches the refreshers it is computed from, through derived inputs."""
    ran = cli("fetch", "--json", write(tmp_path), "count")
    assert ran.code == 0, ran.err
    assert [item["name"] for item in ran.json["refreshers"]] == ["products", "prices"]
    assert [item["name"] for item in ran.json["derived"]] == ["catalog", "count"]
    only_products = cli("fetch", "--json", "refresh.toml", "products")
    assert "derived" not in only_products.json, "a refresher named alone computes nothing"


def test_fetch_a_failing_compute_fails_like_a_required_refresher(cli: Run, tmp_path: Path) -> None:
    """A required derived value whose compute raises: FAILED with the error, exit status 1."""
    extra = '\n[derived.broken]\ncompute = "cli_shop:explode"\ninputs = ["products"]\n'
    ran = cli("fetch", write(tmp_path, extra))
    assert ran.code == 1
    row = next(line for line in ran.out.splitlines() if line.startswith("broken"))
    assert "FAILED" in row
    assert "ValueError: bad data" in row
    assert "a required derived value could not be computed" in ran.out


def test_fetch_says_a_derived_value_was_not_computed_when_an_input_failed(cli: Run, tmp_path: Path) -> None:
    """An input that failed: its derived value is "not computed", naming the input, without waiting."""
    extra = (
        '\n[refreshers.stock]\nsource = "python"\ntarget = "cli_shop:down"\nevery = "1h"\n'
        '\n[derived.orderable]\ncompute = "cli_shop:in_stock"\ninputs = ["stock", "prices"]\n'
        "required = false\n"
    )
    ran = cli("fetch", "--json", write(tmp_path, extra), "orderable")
    assert ran.code == 1  # stock is required
    (result,) = ran.json["derived"]
    assert result["outcome"] == "failed"
    assert result["error"] == "not computed: it needs 'stock', which failed"


def test_fetch_suggests_derived_names_too(cli: Run, tmp_path: Path) -> None:
    """An unknown NAME lists the derived values among the known names, and suggests the closest."""
    ran = cli("fetch", write(tmp_path), "catalogue")
    assert ran.code == 2
    assert "(known: products, prices, catalog, count); did you mean 'catalog'?" in ran.err
