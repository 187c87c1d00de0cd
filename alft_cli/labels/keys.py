"""Matching the file references of a label file to the project's sample keys.

People and tools write references in many forms (a Label Studio local-files or upload URL,
an absolute path, a bare file name); :func:`match_keys` maps each to one sample key or says
why it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from collections.abc import Set as AbstractSet
from urllib.parse import unquote, urlsplit

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)$", re.S)
_DRIVE = re.compile(r"^[A-Za-z]:/")
# /data/upload/<project>/<8 hex>-<original name>: LS keeps only the name of an upload.
_UPLOAD = re.compile(r"^/?data/upload/[^/]+/(?:[0-9a-f]{8}-)?([^/]+)$")
_LOCAL_FILES = re.compile(r"^/?data/local-files/?\?(?:.*&)?d=(.*)$", re.S)


def _strip_lead(path: str) -> str:
    while path.startswith(("./", "/")):
        path = path[2:] if path.startswith("./") else path[1:]
    return path


def _ref_paths(ref: str) -> list[str]:
    """Candidate archive paths for a reference: LS and URL wrappers removed, decoded."""
    s = ref.strip().replace("\\", "/")
    # The substring tests skip the regexes for plain paths, the usual case.
    url = _URL.match(s) if "://" in s else None
    http = url is not None and url.group(1).lower() in ("http", "https")
    if http:
        parts = urlsplit(s)
        s = parts.path + (f"?{parts.query}" if parts.query else "")
    elif url:
        s = url.group(3)  # s3://bucket/key, gs://..., azure-blob://..., file:///abs/path
    local = _LOCAL_FILES.match(s) if "data/" in s else None
    if local:
        s = local.group(1)
    else:
        upload = _UPLOAD.match(s) if "data/" in s else None
        if upload:
            s = upload.group(1)
        elif http:
            s = s.partition("?")[0]  # e.g. a presigned URL's signature
    if _DRIVE.match(s):
        s = s[2:]
    paths = [_strip_lead(s)]
    if "%" in s:
        decoded = _strip_lead(unquote(s))
        if decoded != paths[0]:
            paths.append(decoded)
    return [p for p in paths if p]


class _TailIndex:
    """Maps the last ``n`` path components of every key to the key(s), built per ``n``.

    Built lazily and only for the path depths that references actually have, so matching a
    million keys costs one pass over them per depth (usually one: basenames).
    """

    def __init__(self, keys: AbstractSet[str]) -> None:
        self._keys = keys
        self._tables: dict[int, dict[str, str | list[str]]] = {}

    def longer_keys(self, path: str) -> list[str]:
        """Keys with more components than ``path`` that end with ``/path``."""
        n = path.count("/") + 1
        table = self._tables.get(n)
        if table is None:
            table = self._tables[n] = self._build(n)
        hit = table.get(path)
        if hit is None:
            return []
        return [hit] if isinstance(hit, str) else hit

    def _build(self, n: int) -> dict[str, str | list[str]]:
        table: dict[str, str | list[str]] = {}
        for key in self._keys:
            parts = key.rsplit("/", n)
            if len(parts) <= n:
                continue
            tail = key[len(parts[0]) + 1 :]
            prev = table.get(tail)
            if prev is None:
                table[tail] = key
            elif isinstance(prev, str):
                table[tail] = [prev, key]
            else:
                prev.append(key)
        return table


def _match_one(ref: str, keys: AbstractSet[str], index: _TailIndex) -> tuple[str | None, str]:
    paths = _ref_paths(ref)
    for path in paths:
        if path in keys:
            return path, ""
        # The longest key that the reference ends with, at a "/" boundary
        # (/abs/archive/airplane/a.jpg -> airplane/a.jpg).
        pos = path.find("/")
        while pos != -1:
            if path[pos + 1 :] in keys:
                return path[pos + 1 :], ""
            pos = path.find("/", pos + 1)
    # The one key that ends with the reference (an LS upload keeps only the file name).
    # Tried last: it may need an index over all keys.
    ambiguous: list[str] = []
    for path in paths:
        longer = index.longer_keys(path)
        if len(longer) == 1:
            return longer[0], ""
        ambiguous = ambiguous or longer
    if ambiguous:
        shown = ", ".join(sorted(ambiguous)[:3]) + (", ..." if len(ambiguous) > 3 else "")
        return None, f"{ref!r} matches {len(ambiguous)} images ({shown}); give more of its path"
    return None, f"{ref!r} is not in the project"


def match_keys(refs: Iterable[str], keys: Collection[str]) -> tuple[dict[str, str], list[str]]:
    """Map file references from a label file to the project's sample keys.

    Rule, in order: an exact match; else, after removing Label Studio and URL wrappers
    (``/data/local-files/?d=``, ``/data/upload/<n>/<hash>-``, ``http(s)://host``,
    ``s3://bucket``, ``gs://bucket``, ``file://``, a drive letter) and URL-decoding, the
    longest key that the reference ends with at a ``/`` boundary
    (``/abs/archive/airplane/airplane00.jpg`` -> ``airplane/airplane00.jpg``); else the one key
    that ends with the reference (``airplane00.jpg`` -> ``airplane/airplane00.jpg`` when no
    other key has that name). Nothing is fetched or opened.

    Args:
        refs: File references (``LabelRow.ref``); repeats are matched once.
        keys: The project's sample keys, POSIX paths relative to the archive root. Pass a set
            to save a copy.

    Returns:
        ``(mapping, problems)``. ``mapping`` maps each matched reference to its key.
        ``problems`` has one message per unmatched reference, in input order, that starts
        with the quoted reference and says why (not in the project, or which keys it could
        be). The references missing from ``mapping`` are exactly those with a problem.
    """
    keyset: AbstractSet[str] = keys if isinstance(keys, AbstractSet) else set(keys)
    index = _TailIndex(keyset)
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for ref in dict.fromkeys(refs):
        if ref in keyset:
            mapping[ref] = ref
            continue
        key, reason = _match_one(ref, keyset, index)
        if key is None:
            problems.append(reason)
        else:
            mapping[ref] = key
    return mapping, problems
