"""Reward components on hand-made English and Chinese examples, with the arithmetic shown."""

from __future__ import annotations

import math

import pytest
import torch

from gae.rewards import (
    REWARDS,
    RewardConfig,
    RewardInputs,
    ScoreTable,
    has_cjk,
    score_batch,
    score_inputs,
    tokenize,
)


def run(name: str, responses, references=None, **options) -> list[float]:
    return REWARDS[name](RewardInputs.from_texts(responses, references), **options)


# A user's callables for the `python` component, importable as tests.test_rewards:<name>.
def char_count(*, prompt, response, reference, scale=1.0):
    return scale * len(response)


def batched_first_char_match(*, prompts, responses, references):
    return [
        float(bool(r) and bool(ref) and r[0] == ref[0]) for r, ref in zip(responses, references, strict=True)
    ]


def returns_nan(*, prompt, response, reference):
    return float("nan")


def returns_none(*, prompt, response, reference):
    return None


def raises_key_error(*, prompt, response, reference):
    return {}["x"]


def test_tokenize_splits_cjk_per_character_and_words_by_space():
    assert tokenize("The cat, sat!") == ["the", "cat", "sat"]
    assert tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert tokenize("GPU上的GAE") == ["gpu", "上", "的", "gae"]
    assert has_cjk("猫") and not has_cjk("cat") and not has_cjk(None)
    # extension B and later ideographs (outside the BMP) are characters of their own too
    assert tokenize("𠀀𠀁 ab 𪚥") == ["𠀀", "𠀁", "ab", "𪚥"] and has_cjk("𠀀")


def test_bleu_english_and_chinese():
    # "the cat" vs "the cat sat": 1-gram 2/2, 2-gram 1/1, effective order 2 -> precision 1;
    # brevity penalty exp(1 - 3/2) = exp(-0.5).
    assert run("bleu", ["the cat sat on the mat", "the cat"], ["the cat sat on the mat", "the cat sat"]) == (
        pytest.approx([1.0, math.exp(-0.5)])
    )
    # 'zh' tokenisation: 4 characters all matching (1..4-grams), ref 7 -> BP exp(1 - 7/4).
    assert run("bleu", ["我爱北京"], ["我爱北京天安门"]) == pytest.approx([math.exp(-0.75)])
    # Without CJK splitting the string is one word that does not match: 0.
    assert run("bleu", ["我爱北京"], ["我爱北京天安门"], tokenize="13a") == [0.0]
    assert run("bleu", ["anything"], [None]) == [0.0]


def test_chrf_english_and_chinese():
    # char_order 1, beta 1: "ab" vs "abc": P = 2/2, R = 2/3, F1 = 2 * 1 * 2/3 / (5/3) = 0.8.
    assert run("chrf", ["ab", "我爱"], ["abc", "我爱你"], char_order=1, beta=1) == pytest.approx([0.8, 0.8])
    assert run("chrf", ["the same text", "完全相同"], ["the same text", "完全相同"]) == pytest.approx(
        [1.0, 1.0]
    )
    assert run("chrf", ["xyz", "猫"], ["abc", "狗"]) == pytest.approx([0.0, 0.0])


def test_rouge_l_english_and_chinese():
    # hyp 6 tokens, ref 5, LCS "the cat on mat" = 4: P 4/6, R 4/5, F1 = 2PR/(P+R) = 8/11.
    # 今天天气很好 vs 今天很好: LCS 4, P 4/6, R 1, F1 = 0.8.
    got = run("rouge_l", ["the cat sat on the mat", "今天天气很好"], ["the cat on a mat", "今天很好"])
    assert got == pytest.approx([8 / 11, 0.8])
    assert run("rouge_l", ["", "abc"], ["", None]) == [1.0, 0.0]


def test_unigram_f1_english_and_chinese():
    # the cat sat / the cat ran: common 2, P = R = 2/3 -> F1 2/3. 我爱北京 / 我爱上海: common 2 of 4 -> 0.5.
    # Counts are clipped: "the the the" vs "the cat": common 1, P 1/3, R 1/2, F1 = 0.4.
    got = run(
        "unigram_f1", ["the cat sat", "我爱北京", "the the the"], ["the cat ran", "我爱上海", "the cat"]
    )
    assert got == pytest.approx([2 / 3, 0.5, 0.4])


def test_ends_sentence():
    got = run(
        "ends_sentence",
        ["Hello world.", "Hello world", "你好。", "真的吗？", '"He said hi."', "你好", "Wow! "],
    )
    assert got == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_length_window_units_and_slack():
    inputs = RewardInputs.from_texts(["a b c", "一二三四五", "x"], response_lengths=[3, 10, 1])
    # tokens: 3 in [2, 5]; 10 is 5 over; 1 is 1 under.
    assert REWARDS["length_window"](inputs, min_length=2, max_length=5) == [1.0, 0.0, 0.0]
    # slack 10: 10 -> 1 - 5/10 = 0.5; 1 -> 1 - 1/10 = 0.9.
    assert REWARDS["length_window"](inputs, min_length=2, max_length=5, slack=10) == pytest.approx(
        [1.0, 0.5, 0.9]
    )
    # words: 3, 5 (one per CJK char), 1; chars: 5, 5, 1.
    assert REWARDS["length_window"](inputs, min_length=2, max_length=5, unit="words") == [1.0, 1.0, 0.0]
    assert REWARDS["length_window"](inputs, min_length=5, max_length=5, unit="chars") == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unit"):
        REWARDS["length_window"](inputs, unit="bytes")


def test_distinct_n_english_and_chinese():
    # "the cat the cat": bigrams (the cat)(cat the)(the cat) -> 2 distinct / 3.
    # 哈哈哈哈: 3 bigrams, all 哈哈 -> 1/3. A one-token response has no bigram -> 1.0.
    got = run("distinct_n", ["the cat the cat", "哈哈哈哈", "hi", "我爱北京"])
    assert got == pytest.approx([2 / 3, 1 / 3, 1.0, 1.0])
    assert run("distinct_n", ["a a a b"], n=1) == pytest.approx([0.5])


def test_exact_match():
    got = run("exact_match", [" The  cat ", "北京", "北京市", "x"], ["The cat", "北京", "北京", None])
    assert got == [1.0, 1.0, 0.0, 0.0]
    assert run("exact_match", ["THE CAT"], ["the cat"], lowercase=True) == [1.0]


def test_regex_search_extract_and_reference_pattern():
    assert run("regex", ["answer: 42", "no digits", "共有12个"], pattern=r"\d+") == [1.0, 0.0, 1.0]
    got = run(
        "regex",
        ["#### 42", "#### 41", "答案是 7", "nothing"],
        ["42", "42", "7", "1"],
        pattern=r"(?:####|答案是)\s*(\d+)",
        extract=True,
    )
    assert got == [1.0, 0.0, 1.0, 0.0]
    # No pattern: the reference is the pattern, matched against the whole stripped response.
    assert run("regex", ["cat ", "cats", "北京市"], ["cats?", "cat", "北京.?"]) == [1.0, 0.0, 1.0]


def test_python_callable_per_sample_batched_and_as_name():
    assert run("python", ["abc", "北京"], function="tests.test_rewards:char_count", scale=2.0) == [6.0, 4.0]
    got = run(
        "python",
        ["abc", "北京", ""],
        ["axe", "南京", "x"],
        function="tests.test_rewards:batched_first_char_match",
        batched=True,
    )
    assert got == [1.0, 0.0, 0.0]
    table = score_inputs(
        RewardInputs.from_texts(["ab"]), RewardConfig(components=[{"name": "tests.test_rewards:char_count"}])
    )
    assert table.components["tests_test_rewards_char_count"].tolist() == [2.0]
    with pytest.raises(ValueError, match="cannot import"):
        run("python", ["x"], function="no_such_module_xyz:f")
    with pytest.raises(ValueError, match="module:function"):
        run("python", ["x"], function="no_colon")


def test_sql_expression_over_rollouts():
    inputs = RewardInputs.from_texts(
        ["The end.", "没有结束", "完了。", "x"],
        ["The end.", None, "完了。", "y"],
        finish_reasons=["eos", "length", "eos", "eos"],
    )
    expr = "CASE WHEN response LIKE '%.' OR response LIKE '%。' THEN 1 ELSE 0 END"
    assert REWARDS["sql"](inputs, expression=expr) == [1.0, 0.0, 1.0, 0.0]
    # length() counts characters, so Chinese works; booleans become 1/0; NULL (no reference) becomes 0.
    assert REWARDS["sql"](inputs, expression="length(response)") == [8.0, 4.0, 3.0, 1.0]
    assert REWARDS["sql"](inputs, expression="response = reference") == [1.0, 0.0, 1.0, 0.0]
    assert REWARDS["sql"](inputs, expression="finish_reason = 'eos' and response_length > 1") == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    with pytest.raises(ValueError, match="no_such_column"):
        REWARDS["sql"](inputs, expression="no_such_column + 1")


def test_weighted_total_keeps_each_component():
    cfg = RewardConfig(
        components=[
            {"name": "exact_match", "weight": 2.0},
            {"name": "ends_sentence", "weight": -0.5},
            {"name": "regex", "column": "has_digit", "options": {"pattern": r"\d"}},
        ]
    )
    inputs = RewardInputs.from_texts(["Done.", "7"], ["Done.", "8"])
    t = score_inputs(inputs, cfg)
    # row 0: 2*1 - 0.5*1 + 0 = 1.5; row 1: 2*0 - 0.5*0 + 1 = 1.0
    assert t.total.tolist() == [1.5, 1.0]
    assert list(t.components) == ["exact_match", "ends_sentence", "has_digit"]
    assert t.components["has_digit"].tolist() == [0.0, 1.0]
    assert t.total.dtype == torch.float32


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a reward"):
        RewardConfig(components=[{"name": "blue"}])
    with pytest.raises(ValueError, match="used twice"):
        RewardConfig(components=[{"name": "regex", "options": {"pattern": "a"}}, {"name": "regex"}])
    with pytest.raises(ValueError, match="extra"):
        RewardConfig(components=[{"name": "bleu", "wieght": 1}])
    with pytest.raises(ValueError, match="empty"):
        RewardConfig(components=[])
    with pytest.raises(TypeError, match="length_window"):
        score_inputs(
            RewardInputs.from_texts(["x"]),
            RewardConfig(components=[{"name": "length_window", "options": {"maxlen": 3}}]),
        )


@pytest.mark.parametrize(
    ("component", "error", "match"),
    [
        (
            {"name": "python", "options": {"function": "tests.test_rewards:returns_none"}},
            TypeError,
            "numbers",
        ),
        (
            {"name": "python", "options": {"function": "tests.test_rewards:raises_key_error"}},
            RuntimeError,
            "KeyError",
        ),
        ({"name": "regex", "options": {"pattern": "(unclosed"}}, RuntimeError, "error"),
    ],
)
def test_a_failing_component_is_named(component, error, match):
    cfg = RewardConfig(components=[{"name": "ends_sentence"}, component])
    with pytest.raises(error, match=rf"components\[1\] '{component['name']}'.*{match}"):
        score_inputs(RewardInputs.from_texts(["x."]), cfg)


def test_non_finite_score_is_an_error_naming_the_rollout():
    cfg = RewardConfig(
        components=[{"name": "python", "options": {"function": "tests.test_rewards:returns_nan"}}]
    )
    with pytest.raises(ValueError, match="non-finite.*rollout '0'"):
        score_inputs(RewardInputs.from_texts(["x"]), cfg)


def test_score_batch_uses_batch_fields_and_round_trips(tmp_path):
    from tests.test_store import make_batch

    batch = make_batch()
    cfg = RewardConfig(
        components=[
            {"name": "length_window", "options": {"min_length": 3, "max_length": 4}},
            {"name": "chrf", "weight": 0.5},
        ]
    )
    t = score_batch(batch, cfg)
    # response lengths come from the action mask: [3, 5, 1]
    assert t.components["length_window"].tolist() == [1.0, 0.0, 0.0]
    back = ScoreTable.load(t.save(tmp_path / "scores.safetensors"))
    assert list(back.components) == list(t.components) and back.weights == {"length_window": 1.0, "chrf": 0.5}
    assert torch.equal(back.total, t.total)
    for k in t.components:
        assert torch.equal(back.components[k], t.components[k])
