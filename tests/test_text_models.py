"""Models, loss and metric of the text streams: GRU and HOPE on token ids, language modelling
(next-token loss, bits per character, causality), and the pretrained MiniLM encoder variants."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clbench.evaluation import bits_per_token, evaluate_row
from clbench.models import count_parameters
from clbench.nested.cms import assign_levels, find_chains
from clbench.nested.hope.zoo import build_hope, build_transformer_matched
from clbench.scenarios.stream import ExperienceTensors, ScenarioInfo
from clbench.strategy_context import NextTokenLoss
from clbench.text_models import build_gru

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def private_text_cache(tmp_path_factory):
    """The encoder's disk cache of frozen-bottom outputs goes to a fresh folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLBENCH_CACHE", str(tmp_path_factory.mktemp("clbench_cache")))
        yield

VOCAB = 30
INTENTS = ScenarioInfo("intents", "class_il", 2, 6, (12,), [[0, 1, 2], [3, 4, 5]],
                       extra={"vocab_size": VOCAB, "max_len": 12, "tokenizer": "word", "pad_id": 0})
CHARS = ScenarioInfo("chars", "domain_il", 2, VOCAB, (16,), [list(range(VOCAB))] * 2, metric_name="bpc",
                     higher_is_better=False, extra={"vocab_size": VOCAB, "max_len": 16})


def padded(ids: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([row + [0] * (length - len(row)) for row in ids])


def test_gru_classifier_reads_the_last_real_token_so_padding_changes_nothing():
    torch.manual_seed(0)
    model = build_gru(INTENTS, "smoke").eval()
    texts = [[5, 9, 3], [7, 2, 2, 8, 4, 1]]
    short, long = padded(texts, 12), torch.cat([padded(texts, 12), torch.zeros(2, 4, dtype=torch.long)], 1)
    assert model(short).shape == (2, 6)
    # The extra padding is never read: the state comes from each text's last token.
    long_model = build_gru(ScenarioInfo(**{**INTENTS.__dict__, "input_shape": (16,)}), "smoke").eval()
    long_model.load_state_dict(model.state_dict())
    assert torch.allclose(model(short), long_model(long), atol=1e-6)


@pytest.mark.parametrize("build", [build_gru, build_hope, build_transformer_matched])
def test_language_models_are_causal_and_predict_every_position(build):
    torch.manual_seed(0)
    model = build(CHARS, "smoke").eval()
    x = torch.randint(1, VOCAB, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, VOCAB)
    changed = x.clone()
    changed[:, 10:] = torch.randint(1, VOCAB, (2, 6))
    # A next-character model may only look back: positions before 10 do not change.
    assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-5)
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])


def test_classification_readout_on_a_language_stream_is_refused():
    with pytest.raises(ValueError, match="readout 'cls' does not fit scenario 'chars'"):
        build_hope(CHARS, "smoke", readout="cls")
    with pytest.raises(ValueError, match="readout 'tokens' does not fit scenario 'intents'"):
        build_hope(INTENTS, "smoke", readout="tokens")


def test_ids_outside_the_model_vocabulary_name_the_mismatch():
    model = build_gru(INTENTS, "smoke")
    with pytest.raises(ValueError, match=r"range over \[0, 30\] but the model's vocabulary has 30 ids"):
        model(torch.tensor([[1, 30, 0]]))
    with pytest.raises(ValueError, match="different tokenizers"):
        build_hope(INTENTS, "smoke")(torch.full((1, 12), 99))


def test_next_token_loss_and_bits_per_character():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 5, VOCAB, generator=g), torch.randint(0, VOCAB, (3, 5), generator=g)
    expected = F.cross_entropy(logits.permute(0, 2, 1), targets)  # torch's [B, V, L] convention
    assert torch.allclose(NextTokenLoss()(logits, targets), expected)

    class Uniform(torch.nn.Module):  # p = 1/V everywhere: exactly log2(V) bits per character
        def forward(self, x):
            return torch.zeros(*x.shape, VOCAB)

    x = torch.randint(0, VOCAB, (7, 16))
    assert bits_per_token(Uniform(), x, x, 0, device="cpu", batch_size=3) == pytest.approx(math.log2(VOCAB))
    row = evaluate_row(Uniform(), [ExperienceTensors(x, x, 0)] * 2, device="cpu", batch_size=4, metric="bpc")
    assert row == pytest.approx([math.log2(VOCAB)] * 2)
    with pytest.raises(ValueError, match="unknown metric 'perplexity'; valid: accuracy, bpc"):
        evaluate_row(Uniform(), [], device="cpu", batch_size=4, metric="perplexity")


@pytest.fixture(scope="module")
def brown_root() -> Path:
    root = Path(os.environ.get("CLBENCH_DATA", "../shared/data"))
    corpus = root / "text" / "nltk_data" / "corpora" / "brown.zip"
    assert corpus.exists(), f"this test reads the Brown corpus at {corpus}: set CLBENCH_DATA to the shared data"
    return root


def test_brown_lm_cell_reports_bits_per_character(tmp_path, brown_root):
    from clbench.resolve import resolve_config
    from clbench.runner import run_cell

    cfg = resolve_config("brown_lm", "naive", profile="smoke", seed=0, overrides={
        "model": "gru", "scenario.genres": ["news", "humor"], "scenario.train_windows_per_exp": 32,
        "scenario.test_windows_per_exp": 16})
    result = run_cell(cfg, tmp_path, data_root=brown_root, download=False, progress=False)
    assert result["status"] == "ok", result["error"]
    assert result["metric_name"] == "bpc" and result["higher_is_better"] is False
    vocab = result["scenario_info"]["vocab_size"]
    initial, final = result["initial"], result["matrix"][-1]
    # An untrained model is near log2(V) bits per character; training on text brings it down.
    assert all(abs(b - math.log2(vocab)) < 1.0 for b in initial)
    assert all(f < i for f, i in zip(final, initial, strict=True))


# ---- the pretrained encoder (loads all-MiniLM-L6-v2 from its package, offline) ---------

MINILM = ScenarioInfo("intents", "class_il", 2, 6, (10,), [[0, 1, 2], [3, 4, 5]],
                      extra={"vocab_size": 30522, "max_len": 10, "tokenizer": "minilm", "pad_id": 0})


@pytest.fixture(scope="module")
def wordpiece_batch():
    # [CLS] hello world [SEP] and [CLS] book a flight to paris [SEP], padded with 0
    return padded([[101, 7592, 2088, 102], [101, 2338, 1037, 3462, 2000, 3000, 102]], 10)


def test_minilm_refuses_a_stream_tokenized_otherwise():
    from clbench.text_encoder import build_minilm_frozen

    with pytest.raises(ValueError, match="tokenizer='word', vocab_size=30: set scenario.tokenizer"):
        build_minilm_frozen(INTENTS, "smoke")


def test_minilm_variants_share_the_pretrained_function(wordpiece_batch):
    from clbench.text_encoder import build_minilm_cms, build_minilm_finetune, build_minilm_frozen

    torch.manual_seed(0)
    frozen = build_minilm_frozen(MINILM, "quick").eval()
    torch.manual_seed(0)
    finetune = build_minilm_finetune(MINILM, "quick", cache_bottom=False).eval()
    torch.manual_seed(0)
    cms = build_minilm_cms(MINILM, "quick", levels=3).eval()
    with torch.no_grad():
        ref = frozen(wordpiece_batch)
        # Same head init (same seed), same pretrained encoder: the three agree at the start;
        # the CMS split of the FFN is exact up to summation order.
        assert torch.allclose(finetune(wordpiece_batch), ref, atol=1e-5)
        assert torch.allclose(cms(wordpiece_batch), ref, atol=1e-5)
        assert torch.equal(cms(wordpiece_batch), cms(wordpiece_batch))  # cached bottom: same again
    # Only the head learns in the probe; the top layer (quick) also in the other two.
    assert count_parameters(frozen) == 384 * 6 + 6
    assert count_parameters(finetune) == count_parameters(cms) > 384 * 1536 * 2


def test_minilm_cms_levels_are_the_split_ffns():
    from clbench.text_encoder import build_minilm_cms

    model = build_minilm_cms(MINILM, "smoke", levels=2)  # smoke: 1 trainable layer
    assert len(find_chains(model)) == 1
    levels, rule = assign_levels(model, 2)
    assert rule == "cms" and len(levels) == 3  # two FFN levels + the outer group (attention, head)
    fast, slow, outer = levels
    assert all(".fc1.0." in n or ".fc2.0." in n for n in fast)
    assert any(n.endswith("dense.bias") for n in slow)  # the FFN output bias is the slowest level's
    assert any("attention" in n for n in outer) and any(n.startswith("classifier") for n in outer)


def test_minilm_cache_and_batch_trimming_change_nothing(wordpiece_batch):
    from clbench.text_encoder import build_minilm_finetune

    torch.manual_seed(0)
    cached = build_minilm_finetune(MINILM, "smoke").eval()
    torch.manual_seed(0)
    plain = build_minilm_finetune(MINILM, "smoke", cache_bottom=False).eval()
    with torch.no_grad():
        ref = plain(wordpiece_batch)
        # First call fills the cache, the second reads it, the third reads one row alone
        # (a shorter batch) and one row inside a longer padded batch.
        assert torch.allclose(cached(wordpiece_batch), ref, atol=1e-5)
        assert torch.allclose(cached(wordpiece_batch), ref, atol=1e-5)
        assert torch.allclose(cached(wordpiece_batch[:1, :4]), ref[:1], atol=1e-5)
        longer = torch.cat([wordpiece_batch, torch.zeros(2, 6, dtype=torch.long)], 1)
        assert torch.allclose(cached(longer), ref, atol=1e-5)
    assert len(cached.features.cache.rows) == 2  # one entry per distinct text


def test_bottom_cache_values_do_not_depend_on_batches_cells_or_the_disk(wordpiece_batch, monkeypatch, tmp_path):
    from clbench.text_cache import BottomCache

    calls = []

    def compute(ids):  # stands in for the frozen layers: records what it is asked
        calls.append(tuple(ids.shape))
        return ids.float()[..., None].repeat(1, 1, 3) * 0.5

    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    first = BottomCache("test").lookup(wordpiece_batch, compute)
    assert calls == [(1, 4), (1, 7)]  # each text alone, at its own length
    again = BottomCache("test").lookup(wordpiece_batch[[1, 0]], compute)  # a new cell: from disk
    assert calls == [(1, 4), (1, 7)] and torch.equal(again, first[[1, 0]])
    assert torch.equal(first[0, 4:], torch.zeros(6, 3))  # padding positions come back as zeros
    BottomCache("other").lookup(wordpiece_batch[:1], compute)  # another namespace: computed
    assert calls[-1] == (1, 4)
    monkeypatch.setenv("CLBENCH_CACHE", "off")
    assert BottomCache("test").store is None


@pytest.mark.parametrize("strategy, model", [
    ("ewc", "minilm_finetune"), ("replay", "minilm_finetune"), ("lwf", "minilm_finetune"),
    ("der", "minilm_finetune"), ("cms", "minilm_cms"),
])
def test_baselines_and_cms_train_the_encoder_on_clinc150(tmp_path, brown_root, strategy, model):
    from clbench.resolve import resolve_config
    from clbench.runner import run_cell

    cfg = resolve_config("clinc150", strategy, profile="smoke", seed=0, overrides={
        "model": model, "scenario.tokenizer": "minilm", "scenario.train_per_class": 2, "scenario.test_per_class": 1})
    result = run_cell(cfg, tmp_path, data_root=brown_root, download=False, progress=False)
    assert result["status"] == "ok", result["traceback"]
    R = result["matrix"]
    assert len(R) == 10 and all(len(row) == 10 for row in R)
    assert max(R[i][i] for i in range(10)) > 0.2  # it learns new intents (15 classes: chance 0.07)
