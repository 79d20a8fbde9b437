"""HOPE models over sequences of feature vectors [T, C] (the pretrained-feature track, e.g.
split_cifar100_features with features="tokens"): tokenizer choice, CLS readout and positions
over T tokens, errors for mismatched tokenizers, and the size control's parameter match."""

from __future__ import annotations

import pytest
import torch

from clbench.models import count_parameters
from clbench.nested.hope.model import FeatureTokenizer, find_hope_features
from clbench.nested.hope.zoo import build_hope, build_hope_attention, build_transformer_matched
from clbench.scenarios.stream import ScenarioInfo

from .fitting import fit_fixed_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [list(range(10 * i, 10 * i + 10)) for i in range(10)]


def features_info(shape, **extra) -> ScenarioInfo:
    """The shape conventions of split_cifar100_features: [T, C] tokens or a pooled [C] vector."""
    kind = "tokens" if len(shape) == 2 else "pooled"
    meta = {"backbone": "mobilenet_v2", "kind": kind, "n_tokens": shape[0] if kind == "tokens" else 1, "dim": shape[-1]}
    return ScenarioInfo("split_cifar100_features", "class_il", 10, 100, tuple(shape), CLASSES,
                        extra={"features": meta, **extra})


TOKENS = features_info((4, 32))
IMAGES = ScenarioInfo("split_cifar100", "class_il", 10, 100, (3, 32, 32), CLASSES)
BUILDERS = [build_hope, build_hope_attention, build_transformer_matched]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("tokenizer", ["auto", "features"])
def test_feature_tokens_are_tokenized_by_projection(build, tokenizer):
    model = build(TOKENS, "smoke", tokenizer=tokenizer)
    features = find_hope_features(model)
    assert isinstance(features.tokenizer, FeatureTokenizer)
    assert features.tokenizer.n_tokens == 4
    assert features.pos.shape[1] == 4 + 1  # one position per token plus the CLS appended last
    assert model(torch.rand(3, 4, 32)).shape == (3, 100)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("readout", ["cls", "mean"])
def test_readout_sees_every_token(build, readout):
    """The CLS token is appended after the T tokens, so under causal mixing it is the only
    position that sees them all: every token must move the logits (the mean readout too)."""
    torch.manual_seed(0)
    model = build(TOKENS, "smoke", readout=readout)
    x = torch.rand(2, 4, 32, requires_grad=True)
    model(x).sum().backward()
    per_token = x.grad.abs().sum(dim=(0, 2))
    assert (per_token > 0).all(), per_token


def test_positions_distinguish_token_order():
    """Learned positions make the model order-aware: swapping two tokens changes the output
    even for a mixer whose causal mask alone would make the CLS readout order-blind."""
    torch.manual_seed(0)
    model = build_hope_attention(TOKENS, "smoke").eval()
    x = torch.rand(2, 4, 32)
    swapped = x[:, [1, 0, 2, 3]]
    with torch.no_grad():
        assert not torch.allclose(model(x), model(swapped), atol=1e-6)
        find_hope_features(model).pos.zero_()
        # without positions, CLS attention over the set {tokens} is permutation-invariant
        assert torch.allclose(model(x), model(swapped), atol=1e-5)


def test_tokenizer_normalises_each_token():
    """The per-token LayerNorm makes the tokenizer blind to a token's overall scale and
    offset (backbone maps vary in magnitude across positions and images)."""
    tok = FeatureTokenizer((4, 32), 16)
    x = torch.rand(2, 4, 32)
    scaled = x * torch.tensor([1.0, 10.0, 0.5, 3.0]).view(1, 4, 1) + 2.0
    assert torch.allclose(tok(x), tok(scaled), atol=1e-3)  # eps of the norm aside
    assert count_parameters(tok) == 32 * 16 + 16  # the norm has no parameters of its own


@pytest.mark.parametrize("info, tokenizer, match", [
    (TOKENS, "patch", r"^tokenizer 'patch' does not fit scenario 'split_cifar100_features', whose input is "
                      r"feature tokens \[T, C\] of shape \(4, 32\); valid for it: auto, features$"),
    (TOKENS, "conv", r"^tokenizer 'conv' does not fit .* of shape \(4, 32\); valid for it: auto, features$"),
    (TOKENS, "embedding", r"^tokenizer 'embedding' does not fit .*; valid for it: auto, features$"),
    (IMAGES, "features", r"^tokenizer 'features' does not fit scenario 'split_cifar100', whose input is images "
                         r"\[C, H, W\] of shape \(3, 32, 32\); valid for it: auto, patch, rows, conv$"),
    (features_info((32,)), "auto", r"^scenario 'split_cifar100_features' gives one flat vector of shape \(32,\); "
                                   r"HOPE models need a sequence"),
])
def test_mismatched_tokenizer_is_one_clear_line(info, tokenizer, match):
    with pytest.raises(ValueError, match=match) as err:
        build_hope(info, "smoke", tokenizer=tokenizer)
    assert "\n" not in str(err.value)


def test_a_text_stream_keeps_its_embedding():
    """A 1-D token-id stream with vocab_size stays on the embedding; 2-D feature detection
    must not capture it."""
    text = ScenarioInfo("clinc", "class_il", 5, 150, (32,), [list(range(30))] * 5,
                        extra={"vocab_size": 50, "max_len": 32})
    assert type(find_hope_features(build_hope(text, "smoke")).tokenizer).__name__ == "TokenEmbedding"


@pytest.mark.parametrize("tokens", [16, 25])
def test_transformer_matched_matches_hope_on_mobilenet_tokens(tokens):
    """The size control is matched on the real input width (1280-d tokens), where the
    tokenizer's projection is a large share of the parameters."""
    info = features_info((tokens, 1280))
    hope = count_parameters(build_hope(info, "quick"))
    matched = count_parameters(build_transformer_matched(info, "quick"))
    assert abs(matched - hope) / hope < 0.15, (matched, hope)


def test_hope_learns_a_tiny_feature_stream():
    torch.manual_seed(0)
    model = build_hope(TOKENS, "smoke")
    x, y = torch.rand(32, 4, 32) * 6, torch.randint(0, 100, (32,))
    first, last = fit_fixed_batch(model, x, y, steps=150)
    assert first > 4.0 and last < 0.5, (first, last)


def test_feature_width_32_is_not_taken_for_a_cifar_image():
    """The full profile widens HOPE for 32x32 images; a feature stream whose tokens happen
    to be 32-d must keep the general full width."""
    assert find_hope_features(build_hope(TOKENS, "full")).out_features == 128
    assert find_hope_features(build_hope(IMAGES, "full")).out_features == 192


def test_text_windows_of_32_ids_are_not_a_cifar_image():
    """A full-profile text stream with max_len 32 (input shape (32,)) keeps the general width."""
    text = ScenarioInfo("clinc", "class_il", 5, 150, (32,), [list(range(30))] * 5,
                        extra={"vocab_size": 50, "max_len": 32})
    assert find_hope_features(build_hope(text, "full")).out_features == 128
