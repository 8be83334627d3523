"""Text rules in Python: passages cut at sentence boundaries and the normalisation a content hash
covers. They are the readable references of sql/ingest/cut_prompts.sql and classify.sql."""

from __future__ import annotations

import functools
import re
import sys

# ---------------------------------------------------------------- prompts from plain text

# A prompt or reference ends at a sentence end (. ! ? with closing quotes/brackets, then whitespace),
# right after a CJK full stop, exclamation or question mark (CJK puts no space after them), or at a
# blank line. Greedy `.*` makes a match end at the LAST boundary of a window. No capture group:
# RE2 then finds the match with its DFA, 4x faster than with a submatch. Whitespace is spelled out
# because Python's \s is Unicode-wide and RE2's is ASCII.
BOUNDARY = r"""(?s).*(?:[.!?]["'”’)\]]*[ \t\n\r\f\v]|[。！？][”’」』）]*|\n[ \t\n\r\f\v]*\n)"""
WS = " \t\n\r\f\v\u00a0\u3000"
_WS_RE2 = "[ \\t\\n\\r\\f\\v\\x{00A0}\\x{3000}]"  # WS in RE2
LEAD, TRAIL = f"^{_WS_RE2}*", f"{_WS_RE2}*$"  # the WS a passage's span leaves out at either end


def cut_passages(
    text: str,
    *,
    prompt_chars: int,
    reference_chars: int,
    min_prompt_chars: int = 8,
    min_reference_chars: int = 8,
    max_passages: int = 4,
) -> list[tuple[str, str]]:
    """(prompt, reference) pairs: consecutive passages cut at sentence boundaries.

    The readable reference for sql/ingest/cut_prompts.sql, which ingest runs (set-based,
    one statement per passage number). A prompt ends at the last boundary within
    `prompt_chars` of its start, leaving at least `min_reference_chars` after it; its
    reference runs to the last boundary within `reference_chars`, or to the end of the text
    when that is nearer. A passage without such boundaries ends the cutting.
    """
    boundary = re.compile(BOUNDARY)
    n, out = len(text), []
    pos = n - len(text.lstrip(WS))
    while len(out) < max_passages and n - pos >= min_prompt_chars + min_reference_chars:
        m = boundary.match(text, pos, pos + min(prompt_chars, n - pos - min_reference_chars))
        p_raw = m.group(0) if m else ""
        if len(p_raw.strip(WS)) < min_prompt_chars:
            break
        pe = pos + len(p_raw)
        if n - pe <= reference_chars:
            r_raw = text[pe:]
        else:
            m = boundary.match(text, pe, pe + reference_chars)
            r_raw = m.group(0) if m else ""
        if len(r_raw.strip(WS)) < min_reference_chars:
            break
        out.append((p_raw.strip(WS), r_raw.strip(WS)))
        pos = pe + len(r_raw)
    return out


# ---------------------------------------------------------------- normalisation


@functools.lru_cache(maxsize=1)
def nfc_suspects() -> str:
    """An RE2 character class of every character NFC might change or compose with its neighbour.

    A text with none of them is already NFC (Unicode UAX #15 quick check: all characters
    NFC_QC=Yes and combining class 0), so DuckDB's slow nfc_normalize is skipped for it. The
    class holds combining marks, characters whose NFC differs from themselves (singletons,
    composition exclusions), second halves of canonical pairs (NFC_QC=Maybe) and the Hangul
    vowel and trailing jamo (composed algorithmically). Built from this Python's unicodedata.
    """
    import unicodedata

    cps = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for cp in range(0x80, sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.combining(c) or unicodedata.normalize("NFC", c) != c:
            cps.add(cp)
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<") and len(d.split()) == 2:
            cps.add(int(d.split()[1], 16))
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


@functools.lru_cache(maxsize=1)
def rare_characters() -> str:
    """An RE2 class of every character that makes classify.sql look closer at a non-ASCII text: the NFC
    suspects, whitespace other than a plain space (folded), and control characters other than whitespace
    (counted for the control_characters quarantine). A text without any (and without two spaces in a row)
    is its own normal form, which one pass of RE2's DFA tells."""
    ws = r"\t\n\x0B\f\r\x{00A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
    return "[" + nfc_suspects()[1:-1] + ws + r"\x00-\x08\x0E-\x1F\x7F-\x9F" + "]"


def normalise(text: str) -> str:
    """The text a content hash covers, in Python (the reference for classify.sql): NFC, runs of
    whitespace (ASCII and Unicode spaces) folded into one space, trimmed."""
    import unicodedata

    return re.sub(r"[ \t\n\v\f\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+", " ",
                  unicodedata.normalize("NFC", text)).strip(" ")  # fmt: skip


def content_hash(text: str) -> str:
    import hashlib

    return hashlib.md5(normalise(text).encode()).hexdigest()


def split_of(document_id: str, eval_fraction: float) -> str:
    """The split rule of select_new.sql: the id's first 8 hex digits mod 10000 against the fraction."""
    return "eval" if int(document_id[:8], 16) % 10000 < round(eval_fraction * 10000) else "train"
