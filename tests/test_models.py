"""Model interface tests, run over every architecture (gpt, gru, and hf when transformers is installed).

Tolerances: fp32 on CPU; cached vs recomputed attention and padded vs unpadded attention
differ only in summation order, so 1e-5 absolute on logits (values of order 1-10).
"""

from __future__ import annotations

import pytest
import torch

from gae.models import ModelConfig, build_model, load_model, save_model, score_responses

V = 300
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: on 2 cores shared with other jobs, a second intra-op thread only adds
    barrier waits (measured 5-10x slower). Scoped to the module and restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_tiny_dir(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    d = tmp_path_factory.mktemp("hf-gpt2")
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(d))  # built locally, never downloaded
    return str(d)


@pytest.fixture(scope="module", params=["gpt", "gru", "hf"])
def model_cfg(request, tmp_path_factory):
    if request.param == "hf":
        return ModelConfig(arch="hf", hf_path=hf_tiny_dir(tmp_path_factory))
    return ModelConfig.preset("tiny", arch=request.param)


@pytest.fixture(scope="module")
def model(model_cfg):
    torch.manual_seed(0)
    m = build_model(model_cfg, V).eval()
    with torch.no_grad():  # a non-zero value head so value checks are not vacuous
        m.value_head.weight.normal_(0, 0.5)
    return m


def left_pad(rows: list[torch.Tensor], pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros(len(rows), pad_to, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, pad_to - len(r) :] = r
        mask[i, pad_to - len(r) :] = True
    return ids, mask


def test_value_head_starts_at_zero(model_cfg):
    m = build_model(model_cfg, V)
    ids = torch.randint(3, V, (2, 7))
    _, values = m(ids, torch.ones_like(ids, dtype=torch.bool))
    assert values.shape == (2, 7) and torch.equal(values, torch.zeros(2, 7))


def test_forward_shapes(model):
    ids = torch.randint(3, V, (3, 9))
    logits, values = model(ids, torch.ones_like(ids, dtype=torch.bool))
    assert logits.shape == (3, 9, V) and values.shape == (3, 9) and values.dtype == torch.float32


@torch.no_grad()
def test_left_padding_does_not_change_logits(model):
    torch.manual_seed(1)
    a, b = torch.randint(3, V, (4,)), torch.randint(3, V, (11,))
    la, va = model(a[None], torch.ones(1, 4, dtype=torch.bool))
    ids, mask = left_pad([a, b], 11)
    ids[0, :7] = 123  # garbage under the padding must not matter
    lp, vp = model(ids, mask)
    torch.testing.assert_close(lp[0, 7:], la[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(vp[0, 7:], va[0], atol=ATOL, rtol=0)
    lb, _ = model(b[None], torch.ones(1, 11, dtype=torch.bool))
    torch.testing.assert_close(lp[1], lb[0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_kv_cache_matches_full_recompute(model):
    """Prefill a left-padded batch, then decode one token at a time; compare every step's logits
    with a full forward over the whole sequence."""
    torch.manual_seed(2)
    ids, mask = left_pad([torch.randint(3, V, (3,)), torch.randint(3, V, (6,))], 6)
    new = torch.randint(3, V, (2, 5))
    full_ids = torch.cat([ids, new], 1)
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.bool)], 1)
    full_logits, _ = model(full_ids, full_mask)
    cache = model.new_cache(2, 11)
    logits, cache = model.decode_step(ids, mask, cache)
    steps = [logits]
    for t in range(5):
        logits, cache = model.decode_step(new[:, t : t + 1], full_mask[:, : 7 + t], cache)
        steps.append(logits)
    cached = torch.cat(steps, 1)
    torch.testing.assert_close(
        cached[mask.nonzero(as_tuple=True)], full_logits[mask.nonzero(as_tuple=True)], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(cached[:, 6:], full_logits[:, 6:], atol=ATOL, rtol=0)


def test_save_load_round_trip_bit_identical(model, tmp_path):
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    loaded = load_model(tmp_path / "m")
    ids = torch.randint(3, V, (2, 8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        l1, v1 = model(ids, mask)
        l2, v2 = loaded(ids, mask)
    assert torch.equal(l1, l2) and torch.equal(v1, v2)
    assert loaded.cfg == model.cfg and loaded.cfg.vocab_size == V


def score_reference(model, prompts: list[torch.Tensor], responses: list[torch.Tensor]):
    """Slow obvious reference: one unpadded forward per row, log_softmax, index by hand."""
    out = []
    for p, r in zip(prompts, responses, strict=True):
        seq = torch.cat([p, r])[None]
        n = len(p)
        # the state before response token 0 sits at column n - 1 (the time-aware head counts from it)
        logits, values = model(seq, torch.ones_like(seq, dtype=torch.bool), response_start=n - 1)
        logp = torch.log_softmax(logits[0].double(), -1)
        lp = [logp[n - 1 + t, r[t]].item() for t in range(len(r))]
        v = [values[0, n - 1 + t].item() for t in range(len(r))]
        out.append((lp, v, values[0, -1].item()))
    return out


@torch.no_grad()
def test_score_responses_matches_reference(model):
    torch.manual_seed(3)
    prompts = [torch.randint(3, V, (n,)) for n in (2, 5, 4)]
    responses = [torch.randint(3, V, (n,)) for n in (4, 1, 3)]
    pt, pm = left_pad(prompts, 5)
    rt = torch.full((3, 4), 0, dtype=torch.long)
    am = torch.zeros(3, 4, dtype=torch.bool)
    for i, r in enumerate(responses):
        rt[i, : len(r)] = r
        am[i, : len(r)] = True
    out = score_responses(model, pt, pm, rt, am, compute_entropy=True)
    ref = score_reference(model, prompts, responses)
    for i, (lp, v, last) in enumerate(ref):
        n = len(lp)
        torch.testing.assert_close(
            out.logprobs[i, :n].double(), torch.tensor(lp, dtype=torch.float64), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(out.values[i, :n], torch.tensor(v), atol=ATOL, rtol=0)
        torch.testing.assert_close(out.last_values[i], torch.tensor(last), atol=ATOL, rtol=0)
    off = ~am
    assert (
        torch.all(out.logprobs[off] == 0)
        and torch.all(out.values[off] == 0)
        and torch.all(out.entropy[off] == 0)
    )
    assert torch.all(out.entropy[am] > 0)
    lp, v, ent = out  # unpacks as (logprobs, values, entropy)
    assert lp is out.logprobs


def test_score_responses_is_differentiable_and_checks_shapes(model):
    pt = torch.randint(3, V, (2, 3))
    rt = torch.randint(3, V, (2, 4))
    pm, am = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    out = score_responses(model, pt, pm, rt, am)
    (out.logprobs.sum() + out.values.sum()).backward()
    assert model.value_head.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.actor_parameters())
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="action_mask has shape"):
        score_responses(model, pt, pm, rt, am[:, :3])


def test_separate_critic(model_cfg):
    m = build_model(model_cfg.model_copy(update={"critic": "separate"}), V)
    actor_ids = {id(p) for p in m.actor_parameters()}
    critic_ids = {id(p) for p in m.critic_parameters()}
    assert not actor_ids & critic_ids
    assert len(critic_ids) > 2  # value head + a whole trunk
    for pa, pc in zip(m.actor.parameters(), m.critic_trunk.parameters(), strict=True):
        assert torch.equal(pa, pc)  # critic starts as a copy of the policy trunk
    ids = torch.randint(3, V, (1, 5))
    _, values = m(ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.equal(values, torch.zeros(1, 5))


def test_head_critic_parameters(model):
    assert {id(p) for p in model.critic_parameters()} == {id(p) for p in model.value_head.parameters()}


def test_gpt_rejects_too_long_sequence():
    m = build_model(ModelConfig.preset("tiny", block_size=8), V)
    with pytest.raises(ValueError, match="block_size=8"):
        m(torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.bool))


def test_gru_rejects_right_padding():
    m = build_model(ModelConfig.preset("tiny", arch="gru"), V)
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="left padding only"):
        m(torch.zeros(1, 3, dtype=torch.long), mask)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")


def test_resolve_device_and_threads():
    from gae.device import configure_threads, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == (
        "cuda" if torch.cuda.is_available() else resolve_device("auto").type
    )
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert configure_threads(None) == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        configure_threads(0)


def test_time_aware_value_head_counts_response_steps(tmp_path):
    """value_time_features=1 with only the sin weight set: V(s_t) = sin(pi * t / block_size) for
    the state before response token t, whatever the prompt's length or its left padding."""
    cfg = ModelConfig.preset("tiny", value_time_features=1)
    torch.manual_seed(0)
    m = build_model(cfg, V).eval()
    H = m.actor.hidden_size
    assert m.value_head.in_features == H + 2
    assert torch.equal(m.value_head.weight, torch.zeros(1, H + 2))  # V = 0 before training
    with torch.no_grad():
        m.value_head.weight[0, H] = 1.0  # the sin feature; hidden-state and cos weights stay 0
    prompts, pmask = left_pad([torch.tensor([1, 2, 3, 4, 5]), torch.tensor([7, 8])], 6)
    resp = torch.randint(3, V, (2, 4))
    amask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = score_responses(m, prompts, pmask, resp, amask)
    # t = 0, 1, 2, 3 -> sin(pi * t / 128) (block_size 128 in the tiny preset); 0 off the mask
    want = torch.sin(torch.pi * torch.arange(4.0) / 128).expand(2, 4)
    torch.testing.assert_close(out.values, torch.where(amask, want, 0.0))
    # the state after each row's last token: step 4 and step 2
    torch.testing.assert_close(out.last_values, torch.sin(torch.pi * torch.tensor([4.0, 2.0]) / 128))
    # saved and loaded with the head it was built with; a config saved before the field existed
    # loads as the plain head
    save_model(m, tmp_path / "m")
    assert load_model(tmp_path / "m").value_head.in_features == H + 2
    import json

    m0 = build_model(ModelConfig.preset("tiny", value_time_features=0), V)
    save_model(m0, tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    del raw["model"]["value_time_features"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))
    assert load_model(tmp_path / "old").value_head.in_features == H


# --- Hugging Face backbones: logit post-processing and output layers wider than the tokenizer


def _tiny_hf(kind: str, vocab: int, **extra):
    """A tiny randomly initialised HF causal LM of one family, built locally (never downloaded)."""
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2, **extra
            )
        )
    names = {
        "granite": ("GraniteConfig", "GraniteForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
        "cohere": ("CohereConfig", "CohereForCausalLM"),
    }[kind]
    if not all(hasattr(transformers, n) for n in names):
        pytest.skip(f"transformers {transformers.__version__} has no {names[1]}")
    if kind == "gemma2":
        common["head_dim"] = 16
    return getattr(transformers, names[1])(getattr(transformers, names[0])(**common, **extra))


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("gpt2", {}),
        ("granite", {"logits_scaling": 8.0}),  # the model's forward divides its logits by 8
        # softcap c * tanh(x / c); c = 0.05 is below the random model's logit scale (~0.3), so
        # dropping it changes the logits far beyond the tolerance
        ("gemma2", {"final_logit_softcapping": 0.05}),
        ("cohere", {"logit_scale": 0.0625}),  # multiplies by 1/16
    ],
)
def test_hf_logits_equal_the_models_own(kind, extra, tmp_path):
    torch.manual_seed(0)
    _tiny_hf(kind, 64, **extra).save_pretrained(str(tmp_path / kind))
    m = build_model(ModelConfig(arch="hf", hf_path=str(tmp_path / kind)), 64).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 3, 2, 4]])
    att = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        ours, _ = m(ids, att)
        theirs = m.actor.lm(input_ids=ids, attention_mask=att.long()).logits
        step, _ = m.decode_step(ids, att, m.new_cache(2, 8))  # generation goes through the same head
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(step, theirs, atol=ATOL, rtol=0)
    # and after a save/load round trip (the architecture is rebuilt from its saved config)
    save_model(m, tmp_path / "saved")
    with torch.no_grad():
        again, _ = load_model(tmp_path / "saved").eval()(ids, att)
    torch.testing.assert_close(again, theirs, atol=ATOL, rtol=0)


def test_hf_refuses_unknown_logit_post_processing(tmp_path):
    # GPT-2's forward never reads `logits_scaling`; a config carrying it is an architecture whose
    # output transform we cannot know, so building must refuse rather than score other logits
    torch.manual_seed(0)
    _tiny_hf("gpt2", 64, logits_scaling=4.0).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="logits_scaling"):
        build_model(ModelConfig(arch="hf", hf_path=str(tmp_path)), 64)


def test_hf_output_layer_wider_than_tokenizer_never_yields_unknown_ids(tmp_path):
    from gae.rollout import sample_batch

    torch.manual_seed(0)
    lm = _tiny_hf("gpt2", 64)
    with torch.no_grad():  # make ids 50..63 (no token in a 50-token vocabulary) the likeliest by far
        lm.get_output_embeddings().weight[50:] *= 200.0
    lm.save_pretrained(str(tmp_path))
    m = build_model(ModelConfig(arch="hf", hf_path=str(tmp_path)), 50).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    att = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        logits, _ = m(ids, att)
    assert logits.shape == (1, 5, 50)  # cut to the tokenizer, like the gpt and gru backbones
    probs = torch.softmax(logits.double(), -1)
    assert probs[..., 50:].sum() == 0  # none at ids >= 50 (none at all when the head is cut to 50)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 5, dtype=torch.float64))
    out = sample_batch(
        m,
        [[1, 5, 6], [1, 7], [1, 8, 9, 10]],
        [1, 2, 3],
        max_new_tokens=16,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        eos_id=2,
        pad_id=0,
        device=torch.device("cpu"),
    )
    assert int(out["response_tokens"].max()) < 50
    scored = score_responses(
        m,
        out["prompt_tokens"],
        out["prompt_mask"],
        out["response_tokens"],
        out["action_mask"],
        compute_entropy=True,
    )
    assert torch.isfinite(scored.logprobs).all() and torch.isfinite(scored.entropy).all()


def test_time_features_saturate_instead_of_repeating():
    """The sin/cos features repeat every 2 * block_size steps; a GRU or HF model can run longer,
    so later steps keep the last distinct features instead of looking like early ones."""
    m = build_model(ModelConfig.preset("tiny", arch="gru", value_time_features=4), V)
    bs = m.cfg.block_size
    steps = [10, 2 * bs - 1, 2 * bs + 10, 5 * bs]
    L = max(steps) + 1
    f = m.time_features(torch.zeros(1, L, 8), torch.ones(1, L, dtype=torch.bool), 0)[0]
    assert not torch.allclose(f[10], f[2 * bs + 10], atol=1e-3)  # would coincide without the cap
    assert torch.equal(f[2 * bs + 10], f[2 * bs - 1]) and torch.equal(f[5 * bs], f[2 * bs - 1])
