"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with BOS/EOS/PAD, or any local HF tokenizer.

Byte-level BPE (GPT-2, Radford et al. 2019) maps every UTF-8 byte to a symbol first, so any
text -- CJK, emoji, invalid surrogates already replaced by Python -- encodes without an
unknown token. One token may hold part of a multi-byte character; `token_texts` shows such
pieces with U+FFFD instead of raising, which is what a per-token table wants.

Conventions: `encode` never adds special tokens; callers add BOS in front of a prompt
(rollouts, pretraining) and EOS after a document (pretraining) explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2 in tokenizers we train
N_BYTES = 256


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's `bytes_to_unicode`: the printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on `texts`; write `<out_dir>/tokenizer.json` atomically; return its path.

    `vocab_size` counts the 256 byte symbols and the 3 special tokens, so it must be >= 259.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gae.fsutil import atomic_path

    min_size = N_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size} is below {min_size} (256 bytes + {len(SPECIAL_TOKENS)} specials)"
        )
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir) / "tokenizer.json"
    with atomic_path(out) as tmp:
        tk.save(str(tmp))
    return out


def _special_from_config(tok_dir: Path, key: str) -> str | None:
    """Read `bos_token` etc. from a HF `tokenizer_config.json` / `special_tokens_map.json`."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = tok_dir / name
        if f.exists():
            value = json.loads(f.read_text()).get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return None


class Tok:
    """A thin wrapper over `tokenizers.Tokenizer` with the ids the rest of gaeflow needs.

    `bos_id`, `eos_id`, `pad_id` are always set: a HF tokenizer without a PAD (GPT-2) pads
    with EOS, and one without a BOS starts prompts with EOS, as GPT-2 itself does.
    """

    def __init__(self, tk, *, bos: str | None = None, eos: str | None = None, pad: str | None = None):
        # Text is text: "<|eos|>" written in a document is encoded as its characters, never as
        # the EOS id (which would end a pretraining sample or a prompt early and vanish on decode).
        tk.encode_special_tokens = True
        self._tk = tk
        eos_id = self._first_id(eos, EOS)
        if eos_id is None:
            raise ValueError("tokenizer has no EOS token (looked for the configured one and <|eos|>)")
        bos_id = self._first_id(bos, BOS)
        pad_id = self._first_id(pad, PAD)
        self.eos_id: int = eos_id
        self.bos_id: int = bos_id if bos_id is not None else eos_id
        self.pad_id: int = pad_id if pad_id is not None else eos_id
        self.vocab_size: int = tk.get_vocab_size(with_added_tokens=True)
        self._byte_level = self._is_byte_level()

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tk.token_to_id(token)

    def _first_id(self, *tokens: str | None) -> int | None:
        for token in tokens:
            i = self._id(token)
            if i is not None:
                return i
        return None

    def _is_byte_level(self) -> bool:
        spec = json.loads(self._tk.to_str())
        decoder = spec.get("decoder") or {}
        kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
        return "ByteLevel" in kinds

    @property
    def special_ids(self) -> set[int]:
        return {self.bos_id, self.eos_id, self.pad_id}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; BOS/EOS/PAD are dropped unless `skip_special=False`."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._tk.decode(ids, skip_special_tokens=False)

    def vocab_texts(self) -> list[str]:
        """`token_texts` of every id 0..vocab_size-1, computed once per tokenizer: the store
        looks 10M token ids up in it instead of decoding each id in Python."""
        if getattr(self, "_vocab_texts", None) is None:
            self._vocab_texts = self.token_texts(range(self.vocab_size))
        return self._vocab_texts

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """The text of each token on its own; bytes that are not whole UTF-8 characters show as U+FFFD.

        Never raises for an id inside the vocabulary; an id outside it shows as "<unk:ID>".
        """
        out = []
        table = _unicode_to_byte()
        for i in ids:
            piece = self._tk.id_to_token(int(i))
            if piece is None:
                out.append(f"<unk:{int(i)}>")
            elif int(i) in self.special_ids or not self._byte_level:
                out.append(piece if int(i) in self.special_ids else self._tk.decode([int(i)]))
            elif all(ch in table for ch in piece):
                out.append(bytes(table[ch] for ch in piece).decode("utf-8", errors="replace"))
            else:  # an added (non byte-level) token: its surface form is its text
                out.append(piece)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write `<out_dir>/tokenizer.json` atomically (special-token choices travel in its added tokens)."""
        from gae.fsutil import atomic_path

        out = Path(out_dir) / "tokenizer.json"
        with atomic_path(out) as tmp:
            self._tk.save(str(tmp))
        specials = {
            "bos_token": self._tk.id_to_token(self.bos_id),
            "eos_token": self._tk.id_to_token(self.eos_id),
        }
        specials["pad_token"] = self._tk.id_to_token(self.pad_id)
        from gae.fsutil import atomic_write_json

        atomic_write_json(Path(out_dir) / "special_tokens_map.json", specials)
        return out

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tok(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"


def load_tokenizer(path: str | Path) -> Tok:
    """Load `tokenizer.json`, or a directory holding one (ours or a local Hugging Face tokenizer dir)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"no tokenizer at {path} (expected a tokenizer.json file or a directory holding one)"
        )
    tk = Tokenizer.from_file(str(file))
    d = file.parent
    return Tok(
        tk,
        bos=_special_from_config(d, "bos_token"),
        eos=_special_from_config(d, "eos_token"),
        pad=_special_from_config(d, "pad_token"),
    )
