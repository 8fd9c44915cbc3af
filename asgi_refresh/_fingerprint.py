"""What binds a value kept outside the process to the refresher that made it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgi_refresh._cluster.base import Codec
    from asgi_refresh._sources.base import Source


def fingerprint(source: Source, codec: Codec) -> str:
    """A short hash of what produces a refresher's values (its source's origin) and how they are encoded.

    Kept with every value stored in a coordinator or written to a snapshot: a
    process refuses a value whose fingerprint is not its own (another app on the
    same backend, a snapshot of another source). A hash, so that what is kept
    says nothing about the source but this.
    """
    codec_type = type(codec)
    description = f"{source.origin}\ncodec {codec_type.__module__}.{codec_type.__qualname__}"
    return hashlib.blake2b(description.encode(), digest_size=8).hexdigest()


def content_digest(data: bytes) -> str:
    """A short digest of a value's encoding: the second half of a version id (``3-9f2c41ab``)."""
    return hashlib.blake2b(data, digest_size=4).hexdigest()


VALIDATOR_KEYS = ("digest", "etag", "last_modified", "index")  # what HTTPSource and LongPollSource hand over
_MAX_VALIDATOR_CHARS = 1024
_HEX = re.compile(r"[0-9a-f]{32}")


def checked_handover(meta: Mapping[str, object]) -> dict[str, str] | None:
    """The HTTP validators kept with a value, if they look like validators (they become headers).

    What a coordinator or a snapshot holds is untrusted: a validator must be short
    printable ASCII, and the body digest hex, or it is dropped.
    """
    found: dict[str, str] = {}
    for key in VALIDATOR_KEYS:
        value = meta.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_VALIDATOR_CHARS:
            continue
        if value.isascii() and value.isprintable() and (key != "digest" or _HEX.fullmatch(value)):
            found[key] = value
    return found if "digest" in found else None
