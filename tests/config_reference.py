"""The reference tables of docs/configuration.md, generated from the options as the config reads them.

Not part of the package: only the docs test (tests/test_config_docs.py) runs it, to
check the page, or to rewrite it with ``UPDATE_DOCS=1``.
"""

from __future__ import annotations

from asgi_refresh import RefreshMiddleware, Webhook
from asgi_refresh._config import (
    EXCLUDED,
    NONE_WORD,
    PYTHON_SOURCE,
    SOURCES,
    Kind,
    Option,
    derived_options,
    family_options,
    middleware_options,
    options_of,
    refresher_options,
    source_options,
)
from asgi_refresh._duration import format_duration
from asgi_refresh._sources.parsing import FORMATS

TYPE_NAMES: dict[Kind, str] = {
    "duration": "duration",
    "bool": "boolean",
    "int": "integer",
    "number": "number",
    "str": "string",
    "url": "string (URL)",
    "path": "string (path)",
    "table": "table",
    "str_table": "table of strings",
    "inputs": "list of names",
    "callable": "import string",
    "callables": "list of import strings",
    "objects": "list of import strings",
    "guards": 'import string, `{ max_shrink = 0.5 }`, `{ required_keys = ["id"] }`, or a list of them',
    "format": " / ".join(f'`"{name}"`' for name in FORMATS) + " or import string",
    "choice": "one of",  # _type_name lists the choices
    "names": "string or list of strings",
    "auth": '`["user", "password"]`, `{ bearer = "name" }` or import string',
    "token": '`"${ADMIN_TOKEN}"` or `{ check = "module:function" }`',
    "coordinator": '`{ backend = "redis", url = "..." }`, `{ backend = "sqlite", path = "..." }` or '
    '`{ backend = "postgres", dsn = "..." }` or `{ backend = "nats", servers = "..." }`, plus the backend\'s options '
    "(`prefix`, `timeout`; `poll_interval` for SQLite and PostgreSQL; `schema`, `create_schema` for PostgreSQL; "
    "`bucket` for NATS)",
    "codec": "import string (an object with `encode` and `decode`)",
    "webhooks": "table of `[middleware.admin_webhooks.<hook>]` tables (below)",
    "keys": 'list of keys: strings, integers, or lists of them (`["EUR", ["EUR", "USD"]]`)',
    "any": "any",
    "unknown": "see the API reference",
}


def _type_name(option: Option) -> str:
    if (option.owner, option.parameter) == ("Webhook", "refreshers"):
        return "list of refresher names"
    name = TYPE_NAMES[option.kind]
    if option.kind == "choice":
        name = " / ".join(f'`"{choice}"`' for choice in option.choices)
    return f'{name} or `"{NONE_WORD}"`' if option.none_word_applies else name


def _default_text(option: Option) -> str:
    if option.required:
        return "required"
    default = option.default
    if default is None:
        return "not set"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f'`"{default}"`'
    if option.kind == "duration" and isinstance(default, int | float):
        return f'`"{format_duration(default)}"`'  # as a file writes it: 60.0 reads `"1m"`
    if isinstance(default, int) and option.kind == "int" and default >= 1024:
        return f"`{default}`"
    return f"`{default!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(options: list[Option]) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for option in options:
        meaning = option.meaning
        if option.kind == "path":
            meaning += (
                " From a config file, a relative path is resolved against that file's directory "
                "instead; from a mapping, against the current directory."
            )
        if option.kind == "auth":
            meaning += (
                ' In a config: `["user", "password"]` (basic auth), `{ bearer = "token" }` (a `BearerToken`: '
                "the value of refresher `token`) or the import string of an `httpx.Auth` or a callable."
            )
        if option.kind == "guards":
            meaning += (
                " In a config: the import string of a guard of yours, a built-in one as a table "
                '(`{ max_shrink = 0.5 }` is `max_shrink(0.5)`, `{ required_keys = ["a", "b"] }` is '
                '`required_keys("a", "b")`), or a list of them, asked in that order.'
            )
        if (option.owner, option.parameter) == ("SSESource", "fetch_url"):
            meaning += " In a config: a URL."
        if option.key != option.parameter and option.owner != "python":
            meaning = f"`{option.owner}`'s `{option.parameter}`. {meaning}"
        lines.append(
            f"| `{option.key}` | {_type_name(option)} | {_default_text(option)} | {_cell(meaning)} |"
        )
    return lines


_SOURCE_CHOICES = [f'`"{source}"`' for source in (*SOURCES, PYTHON_SOURCE)]


def reference_markdown() -> str:
    """The reference tables of the configuration page, generated from the signatures."""
    refresher = [o for o in refresher_options() if o.parameter not in ("name", "fetch")]
    out = [
        "### `[defaults]` and `[refreshers.<name>]`: refresher options",
        "",
        "In `[defaults]` they apply to every refresher; in a refresher's own table they override",
        "the default.",
        "",
        *_rows(refresher),
        "",
        "### `[refreshers.<name>]`: `source` and its options",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
        f"| `source` | {' / '.join(_SOURCE_CHOICES)} | required | "
        "Where the data comes from: `HTTPSource`, `FileSource`, `LongPollSource`, `SSESource`, "
        "or a function of yours. |",
        "",
    ]
    for source in (*SOURCES, PYTHON_SOURCE):
        title = {
            "http": "`HTTPSource`",
            "file": "`FileSource`",
            "longpoll": "`LongPollSource`",
            "sse": "`SSESource`",
        }.get(source, "your function")
        out += [f'#### `source = "{source}"`: {title}', "", *_rows(source_options(source)), ""]
    out += [
        "### `[families.<name>]`: data per key (`RefresherFamily`)",
        "",
        "Each table is one family, read with `await handle.get(name, key)`; `[defaults]` does not",
        "apply to families. Names are unique across `[refreshers]` and `[families]`.",
        "",
        *_rows(family_options()),
        "",
        "### `[derived.<name>]`: one `Derived` per derived value",
        "",
        "Computed from the refreshers and derived values that `inputs` names, and published in the",
        'same snapshot as the input change that caused it (see the guide "Derived values").',
        "",
        *_rows(derived_options()),
        "",
        "### `[middleware]`",
        "",
        *_rows(middleware_options(RefreshMiddleware)),
        "",
        "#### `[middleware.admin_webhooks.<hook>]`: one `Webhook` per hook",
        "",
        "Served at `POST {admin_path}/hooks/<hook>`. Set exactly one of `github_secret`, `gitlab_token`",
        'and `standard_secret`, from the environment: `github_secret = "${DEPLOY_HOOK_SECRET}"`.',
        "",
        *_rows(options_of(Webhook)),
        "",
        "### Not configurable in a file",
        "",
    ]
    out += ["| parameter | instead |", "| --- | --- |"]
    out += [f"| `{name}` | {reason} |" for name, reason in EXCLUDED.items()]
    return "\n".join(out) + "\n"
