"""The embedded default corpus: the standard library's docstrings and help topics, staged."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gae.ingest.config import DEFAULT_CORPUS_URI
from gae.ingest.staging import _stage

if TYPE_CHECKING:
    import pyarrow as pa


# ---------------------------------------------------------------- the embedded default corpus


# Folders and modules of the standard library whose docstrings are not prose worth training on.
_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "tkinter", "turtledemo",
               "ensurepip", "pydoc_data", "encodings", "__pycache__", "__phello__"}  # fmt: skip
_SKIP_FILES = {"this.py", "antigravity.py"}
_MODULE_DOC = re.compile(r"""\A(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*[rRuU]?(\"\"\"|''')""")
_DEF_DOC = re.compile(
    r"^[ \t]*(?:async[ \t]+)?(def|class)[ \t]+([A-Za-z]\w*)[ \t]*"  # public names only
    r"(?:\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\))?"  # parameters or bases, two levels of nesting
    r"[ \t]*(?:->[^:\n]*)?:[ \t]*(?:#[^\n]*)?\n"  # return annotation, colon, comment
    r"\s*[rRuU]?(\"\"\"|''')",  # the docstring opens
    re.M,
)
MIN_DOC_CHARS = 80


def _clean_doc(doc: str) -> str:
    """cleandoc, minus doctest blocks (a `>>>` line and what follows up to a blank line)."""
    import inspect

    out, in_doctest = [], False
    for line in inspect.cleandoc(doc).splitlines():
        if line.lstrip().startswith(">>>"):
            in_doctest = True
        elif not line.strip():
            in_doctest = False
        if not in_doctest:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _docstring_at(src: str, quote_end: int, quote: str) -> str | None:
    import ast

    close = src.find(quote, quote_end)
    if close < 0:
        return None
    start = quote_end - len(quote)
    if start > 0 and src[start - 1] in "rRuU":
        start -= 1
    try:
        value = ast.literal_eval(src[start : close + len(quote)])
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def stdlib_doc_records() -> Iterator[tuple[str, list[dict]]]:
    """(source uri, records) of the standard library's prose, in a fixed order.

    Docstrings are found by a regex over each module's source rather than `ast.parse`
    (7 s for the whole library on a 2-core machine) or importing (side effects).
    """
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune in place: site-packages alone holds thousands of files that are not the library
        dirnames[:] = [
            d for d in dirnames if d not in _SKIP_PARTS and not d.startswith(("test", "config-", "."))
        ]
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py") and f not in _SKIP_FILES]
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if path.name.startswith("test"):
            continue
        try:
            src = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found = []
        m = _MODULE_DOC.match(src)
        if m:
            found.append((m.end(1), m.group(1), "module", module))
        found += [(d.end(3), d.group(3), d.group(1), d.group(2)) for d in _DEF_DOC.finditer(src)]
        recs, line, pos = [], 1, 0
        for end, quote, kind, name in found:
            line += src.count("\n", pos, end)
            pos = end
            doc = _docstring_at(src, end, quote)
            text = _clean_doc(doc) if doc else ""
            if len(text) >= MIN_DOC_CHARS:
                meta = {"module": module, "kind": kind, "name": name}
                recs.append({"line": line, "record": len(recs) + 1, "text": text, "meta": meta})
        if recs:
            yield DEFAULT_CORPUS_URI + rel.as_posix(), recs
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out; the docstrings are enough
        return
    recs = [
        {"line": None, "record": i + 1, "text": topics[k].strip(), "meta": {"topic": k}}
        for i, k in enumerate(sorted(topics))
        if len(topics[k].strip()) >= MIN_DOC_CHARS
    ]
    yield DEFAULT_CORPUS_URI + "pydoc_data/topics.py", recs


def default_corpus() -> pa.Table:
    """The corpus every CPython has without a download, staged: docstrings of the standard
    library (read from its .py sources, never imported) and the Language Reference topics
    that `help()` shows (`pydoc_data.topics`). Deterministic for a given interpreter."""
    recs = [(uri, r) for uri, rs in stdlib_doc_records() for r in rs]
    return _stage(
        len(recs),
        source=[u for u, _ in recs],
        line=[r["line"] for _, r in recs],
        record=[r["record"] for _, r in recs],
        body=[r["text"] for _, r in recs],
        is_json=[False] * len(recs),
        meta=[json.dumps(r["meta"], ensure_ascii=False) for _, r in recs],
    )
