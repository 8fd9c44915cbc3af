"""The configuration page documents every key, as the code has it, and its examples are valid."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from asgi_refresh import FileSource, HTTPSource, LongPollSource, RefreshMiddleware, SSESource, Webhook
from asgi_refresh._config import (
    SOURCES,
    Config,
    derived_options,
    family_options,
    load_config,
    middleware_options,
    refresher_options,
    source_options,
)
from asgi_refresh.prometheus import PrometheusMetrics

from .config_reference import reference_markdown

PAGE = Path(__file__).parent.parent / "docs" / "configuration.md"
START = re.compile(r"<!-- reference:start[^>]*-->\n\n")
END = "\n<!-- reference:end -->"


def load(source: Any, environ: Mapping[str, str] | None = None) -> Config:
    """`load_config` given the middleware class, as `RefreshMiddleware.from_config` calls it."""
    return load_config(source, environ, middleware=RefreshMiddleware)


def generated_block(text: str) -> tuple[int, int]:
    start = START.search(text)
    assert start is not None, "docs/configuration.md lost its <!-- reference:start --> marker"
    end = text.index(END, start.end())
    return start.end(), end


def test_the_reference_is_what_the_code_generates() -> None:
    """The reference section equals the tables generated from the signatures and docstrings.

    After adding or changing an option, regenerate it with
    ``UPDATE_DOCS=1 python -m pytest tests/test_config_docs.py``.
    """
    text = PAGE.read_text()
    start, end = generated_block(text)
    expected = reference_markdown()
    if os.environ.get("UPDATE_DOCS") and text[start:end] != expected:
        PAGE.write_text(text[:start] + expected + text[end:])
        text = PAGE.read_text()
    assert text[start:end] == expected, (
        "docs/configuration.md is out of date with the code: run "
        "UPDATE_DOCS=1 python -m pytest tests/test_config_docs.py"
    )


def test_every_key_is_documented() -> None:
    """Each key of every table has a row in the page, with a meaning."""
    text = PAGE.read_text()
    options = [
        *refresher_options(),
        *middleware_options(RefreshMiddleware),
        *family_options(),
        *derived_options(),
    ]
    for source in (*SOURCES, "python"):
        options += source_options(source)
    for option in options:
        row = re.search(rf"^\| `{re.escape(option.key)}` \|.*\| (?P<meaning>[^|]+) \|$", text, re.MULTILINE)
        assert row is not None, f"{option.key} ({option.owner}.{option.parameter}) is not documented"
        assert row["meaning"].strip(), option.key
    assert "| `source` |" in text


@pytest.fixture
def myapp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``myapp.rates``, ``myapp.catalog`` and ``myapp.metrics`` functions the page's examples name."""
    package, rates, metrics = ModuleType("myapp"), ModuleType("myapp.rates"), ModuleType("myapp.metrics")
    catalog = ModuleType("myapp.catalog")

    async def load() -> dict[str, float]:
        return {"USD": 1.08}

    async def load_pair(key: object) -> float:
        return 1.08

    def build_catalog(products: list[str], prices: dict[str, float]) -> dict[str, float]:
        return {name: prices.get(name, 0.0) for name in products}

    rates.load = load  # type: ignore[attr-defined]
    catalog.load_products = lambda: ["tea"]  # type: ignore[attr-defined]
    catalog.load_prices = lambda: {"tea": 2.5}  # type: ignore[attr-defined]
    catalog.build_catalog = build_catalog  # type: ignore[attr-defined]
    rates.load_pair = load_pair  # type: ignore[attr-defined]
    metrics.metrics = PrometheusMetrics(CollectorRegistry())  # type: ignore[attr-defined]
    package.rates = rates  # type: ignore[attr-defined]
    package.metrics = metrics  # type: ignore[attr-defined]
    package.catalog = catalog  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", package)
    monkeypatch.setitem(sys.modules, "myapp.rates", rates)
    monkeypatch.setitem(sys.modules, "myapp.metrics", metrics)
    monkeypatch.setitem(sys.modules, "myapp.catalog", catalog)


def test_the_toml_examples_are_valid(myapp: None) -> None:
    """Every TOML sample on the page parses, and a full one builds its refreshers."""
    samples = re.findall(r"```toml\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert len(samples) >= 2
    environ = {"NAMES_TOKEN": "example-token", "FLAGS_TOKEN": "example-token"}
    for sample in samples:
        document = tomllib.loads(sample)
        config = load(document, environ=environ)
        assert config.refreshers
    first = load(tomllib.loads(samples[0]), environ={"NAMES_TOKEN": "example-token"})
    names, flags, rates = first.refreshers
    assert isinstance(names.fetch, HTTPSource)
    assert isinstance(flags.fetch, FileSource)
    assert rates.fetch is sys.modules["myapp.rates"].load
    assert first.middleware == {"startup_timeout": "1m"}
    pushed = load(tomllib.loads(next(s for s in samples if 'source = "sse"' in s)), environ=environ)
    streamed, catalog = (refresher.fetch for refresher in pushed.refreshers)
    assert isinstance(streamed, SSESource)
    assert (streamed.fetch_url, streamed.heartbeat_timeout) == ("https://flags.example.com/flags", 30.0)
    assert isinstance(catalog, SSESource)
    assert (catalog.on_event, catalog.events) == ("refetch", frozenset({"catalog"}))
    with_metrics = load(tomllib.loads(next(s for s in samples if "listeners" in s)))
    assert with_metrics.middleware["listeners"] == [sys.modules["myapp.metrics"].metrics]
    derived = load(tomllib.loads(next(s for s in samples if "[derived." in s)))
    (built,) = derived.derived
    assert (built.name, built.inputs, built.compute) == (
        "catalog",
        ("products", "prices"),
        sys.modules["myapp.catalog"].build_catalog,
    )


def test_the_push_guides_toml_samples_load() -> None:
    """The push guide's samples build what they say: a long-poll and SSE refreshers, and a webhook."""
    guide = PAGE.parent / "guides" / "push.md"
    samples = [
        tomllib.loads(sample) for sample in re.findall(r"```toml\n(.*?)```", guide.read_text(), re.DOTALL)
    ]
    environ = {
        "REFRESH_ADMIN_TOKEN": "an-admin-token-of-16+chars",
        "DEPLOY_HOOK_SECRET": "a-webhook-secret-of-16+chars",
        "CONSUL_TOKEN": "consul-token",
        "FLAGS_TOKEN": "flags-token",
    }
    hooked, polled, streamed = samples
    refreshers = {
        name: {"source": "http", "url": f"https://example.com/{name}", "every": "1m"}
        for name in ("names", "rates")
    }
    webhook = load({**hooked, "refreshers": refreshers}, environ=environ).middleware["admin_webhooks"][
        "deploy"
    ]
    assert isinstance(webhook, Webhook)
    assert (webhook.refreshers, webhook.github_secret) == (("names", "rates"), "a-webhook-secret-of-16+chars")
    assert [type(r.fetch) for r in load(polled, environ=environ).refreshers] == [LongPollSource]
    assert [type(r.fetch) for r in load(streamed, environ=environ).refreshers] == [SSESource, SSESource]
