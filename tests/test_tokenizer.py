"""Byte-level BPE tokenizer: round trips on any UTF-8, special ids, per-token text that never raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gae.tokenizer import load_tokenizer, train_tokenizer

TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "To be, or not to be, that is the question.",
    "莫笑农家腊酒浑，丰年留客足鸡豚。山重水复疑无路，柳暗花明又一村。",
    "naïve café — déjà vu 😀",
] * 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    path = train_tokenizer(TEXTS, vocab_size=300, out_dir=out)
    assert path == out / "tokenizer.json" and path.exists()
    return load_tokenizer(out)


def test_special_ids_and_vocab(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 300
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"  # specials dropped
    assert tok.encode("hi") == tok.encode_batch(["hi"])[0]


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "莫笑农家腊酒浑",
        "日本語とひらがな",
        "emoji 😀🎉 mixed 中文 text",
        "",
        "\n\t  spaces",
        # the special tokens' own spellings are text like any other: no special id, exact round trip
        "hi <|eos|> there <|pad|><|bos|>",
    ],
)
def test_round_trip_any_utf8(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert not set(ids) & {tok.pad_id, tok.bos_id, tok.eos_id}  # encode adds no specials


def test_token_texts_partial_utf8(tok):
    # 农 is 3 bytes (e5 86 9c) and unseen as a merge with this tiny vocab: split into byte tokens
    ids = tok.encode("农")
    texts = tok.token_texts(ids)
    assert len(texts) == len(ids)
    if len(ids) > 1:
        assert all("\ufffd" in t for t in texts)
    assert "".join(tok.token_texts(tok.encode("hello world"))) == "hello world"
    assert tok.token_texts([tok.eos_id, 10**6]) == ["<|eos|>", "<unk:1000000>"]
    # every single id renders without raising
    assert len(tok.token_texts(range(tok.vocab_size))) == tok.vocab_size


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(TEXTS, vocab_size=100, out_dir=tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_hf_style_dir_without_pad(tmp_path, tok):
    # a GPT-2-like dir: special tokens named in tokenizer_config.json, no PAD -> pads with EOS
    tok._tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<|eos|>"}, "eos_token": "<|eos|>"})
    )
    hf = load_tokenizer(Path(tmp_path))
    assert hf.eos_id == 2 and hf.bos_id == 2
    assert hf.pad_id == 0  # our file still has <|pad|>
