"""`OptionError`: a constructor's complaint about one of its arguments, and which one it blames.

The classes that users build (`Refresher`, the sources, the middleware, the
coordinators) check every argument when they are made. Their errors stay the
`ValueError`, `TypeError` or `ImportError` that people catch, and also say, as an
attribute, which argument is wrong: the config loader puts the complaint under
that key (``refreshers.names.every: ...``) without reading it out of the message.
"""

from __future__ import annotations

from typing import Any


class OptionError(Exception):
    """An argument of a constructor is invalid; ``option`` names it.

    Raised as `OptionValueError`, `OptionTypeError` or `OptionImportError`, so
    that ``except ValueError`` (or `TypeError`, `ImportError`) still catches it.
    Its message is ``"<owner>: <text>"``, e.g.
    ``Refresher 'names': every must be at least 10ms (got '1ms')``.

    Attributes:
        owner: What complains, as the message starts: ``"Refresher 'names'"``,
            ``"HTTPSource('https://api.example.com/names')"``; empty for none.
        option: The parameter blamed, as the constructor spells it: ``"every"``.
        text: The message without the owner.
    """

    def __init__(self, owner: str, option: str, text: str) -> None:
        super().__init__(f"{owner}: {text}" if owner else text)
        self.owner = owner
        self.option = option
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from `args` (the message alone), which __init__ does not take.
        return type(self), (self.owner, self.option, self.text)

    @property
    def detail(self) -> str:
        """``text`` without the option's name in front, for a line that is already under that name.

        ``"every must be > 0"`` gives ``"must be > 0"`` and ``"timeout: expected ..."``
        gives ``"expected ..."``; ``"admin_token and admin_loopback_only need ..."`` and
        a text that does not start with the name stay whole.
        """
        for prefix in (f"{self.option}: ", f"{self.option} "):
            rest = self.text[len(prefix) :]
            # "reconnect_delay (2m) must not exceed ...": the name is the subject, kept.
            if self.text.startswith(prefix) and not rest.startswith(("and ", "or ", "(")):
                return rest
        return self.text


class OptionValueError(OptionError, ValueError):
    """An argument is out of range or malformed (a `ValueError`)."""


class OptionTypeError(OptionError, TypeError):
    """An argument has the wrong type (a `TypeError`)."""


class OptionImportError(OptionError, ImportError):
    """An argument needs an optional dependency that is not installed (an `ImportError`)."""


OptionError.__module__ = "asgi_refresh"  # tracebacks name it as it is imported
