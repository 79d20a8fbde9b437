"""Text streams: the real shared data (smoke profiles, SOURCES.md counts) and the
stream logic on fixture files (tests/test_text_data.py writes them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench.errors import ConfigError, CorruptDataError
from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.scenarios.datasets import resolve_data_root
from clbench.scenarios.text import char_windows, split_genre_files
from clbench.scenarios.text_data import (
    BROWN_GENRES,
    load_20newsgroups,
    load_banking77,
    load_brown,
    load_clinc150,
)

from .test_text_data import write_banking, write_brown, write_clinc, write_news

REAL_ROOT = resolve_data_root(None)  # computed before any test changes the environment


def real_text_root():
    if not (REAL_ROOT / "text" / "clinc150" / "data_full.json").is_file():
        pytest.skip(f"text/ not found under {REAL_ROOT}; set CLBENCH_DATA to the shared data folder")
    return REAL_ROOT


def build(name, data_root, profile="smoke", seed=0, **options):
    spec = SCENARIOS.get(name)
    cfg = resolve_config(name, "naive", seed=seed, profile=profile, overrides={f"scenario.{k}": v for k, v in options.items()})
    return spec.builder(spec.options(**cfg.scenario_args), profile, seed, data_root, False)


def check_class_il(stream, n_classes: int, n_experiences: int):
    info = stream.info
    assert info.scenario_type == "class_il" and info.n_classes == n_classes and len(stream.train) == n_experiences
    assert {"vocab_size", "max_len", "tokenizer", "pad_id"} <= set(info.extra) and info.extra["pad_id"] == 0
    seen = set()
    for e, classes in enumerate(info.classes_per_exp):
        assert not seen & set(classes)
        seen |= set(classes)
        for exp in (stream.train[e], stream.test[e]):
            assert exp.x.dtype == torch.int64 and exp.x.shape[1:] == (info.extra["max_len"],) == info.input_shape
            assert set(exp.y.tolist()) <= set(classes) and exp.task == 0 and len(exp) > 0
            assert int(exp.x.max()) < info.extra["vocab_size"] and bool((exp.x[:, 0] != 0).all())
    assert len(seen) == n_classes


# --------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_counts_match_sources_md():
    root = real_text_root()
    clinc = load_clinc150(root, download=False)
    assert {s: len(v) for s, v in clinc.splits.items()} == {
        "train": 15000, "val": 3000, "test": 4500, "oos_train": 100, "oos_val": 100, "oos_test": 1000}
    for split, per_intent in (("train", 100), ("val", 20), ("test", 30)):
        assert np.bincount(clinc.splits[split].labels).tolist() == [per_intent] * 150
    assert len(clinc.domains) == 10 and all(len(v) == 15 for v in clinc.domains.values())
    names, banking = load_banking77(root, download=False)
    assert len(names) == 77 and (len(banking["train"]), len(banking["test"])) == (10003, 3080)
    train_counts = np.bincount(banking["train"].labels, minlength=77)
    assert (train_counts.min(), train_counts.max()) == (35, 187)
    assert np.bincount(banking["test"].labels).tolist() == [40] * 77
    groups, news = load_20newsgroups(root, download=False)
    assert len(groups) == 20 and (len(news["train"]), len(news["test"])) == (11314, 7532)
    # The official bydate split, per group in alphabetical order.
    assert np.bincount(news["train"].labels).tolist() == [
        480, 584, 591, 590, 578, 593, 585, 594, 598, 597, 600, 595, 591, 594, 593, 599, 546, 564, 465, 377]
    assert np.bincount(news["test"].labels).tolist() == [
        319, 389, 394, 392, 385, 395, 390, 396, 398, 397, 399, 396, 393, 396, 394, 398, 364, 376, 310, 251]
    brown = load_brown(root, download=False)
    assert sorted(brown) == sorted(BROWN_GENRES) and sum(len(f) for f in brown.values()) == 500
    assert {g: len(brown[g]) for g in ("news", "religion", "hobbies", "learned", "fiction", "humor")} == {
        "news": 44, "religion": 17, "hobbies": 36, "learned": 80, "fiction": 29, "humor": 9}


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "n_classes", "n_experiences"), [("clinc150", 150, 10), ("banking77", 77, 7), ("20news", 20, 5)])
def test_real_smoke_streams(name, n_classes, n_experiences):
    stream = build(name, real_text_root())
    check_class_il(stream, n_classes, n_experiences)
    stats = stream.info.extra["text_stats"]
    assert stats["train"]["texts"] == 4 * n_classes and stats["test"]["texts"] == 2 * n_classes
    assert stats["train"]["kept"] == sum(len(e) for e in stream.train)
    assert len(stream.info.extra["vocabulary_sha256"]) == 64
    benchmark = stream.to_benchmark()
    assert len(benchmark.train_stream) == n_experiences


@pytest.mark.realdata
def test_real_clinc_with_minilm_wordpieces():
    stream = build("clinc150", real_text_root(), tokenizer="minilm", max_len=16)
    check_class_il(stream, 150, 10)
    x = torch.cat([e.x for e in stream.train])
    assert stream.info.extra["vocab_size"] == 30522 and bool((x[:, 0] == 101).all())
    assert bool(((x == 102).sum(1) == 1).all())  # exactly one [SEP] per row, truncated or not


@pytest.mark.realdata
def test_real_brown_lm_windows_and_split():
    stream = build("brown_lm", real_text_root(), genres=["news", "humor"], context=32,
                   train_windows_per_exp=None, test_windows_per_exp=None)
    info = stream.info
    assert (info.metric_name, info.higher_is_better, info.scenario_type) == ("bpc", False, "domain_il")
    vocabulary = info.extra["vocabulary"]
    assert info.extra["vocab_size"] == len(vocabulary) == info.n_classes and info.extra["max_len"] == 32
    decode = lambda ids: "".join(vocabulary[i] for i in ids.tolist())  # noqa: E731
    assert decode(stream.train[0].x[0]) == "The Fulton County Grand Jury sai"
    assert decode(stream.train[0].y[0]) == "he Fulton County Grand Jury said"
    news = info.extra["stats"]["news"]
    assert news["test"]["files"] == ["ca41", "ca42", "ca43", "ca44"] and len(news["train"]["files"]) == 40
    assert info.extra["stats"]["humor"]["test"]["files"] == ["cr09"]
    assert news["train"]["windows_total"] == (news["train"]["chars"] - 33) // 32 + 1 == len(stream.train[0])
    smoke = build("brown_lm", real_text_root())
    assert info.extra["stats"]["humor"]["test"]["unk_chars"] == 0
    assert smoke.info.extra["genres"] == ["news", "religion", "hobbies", "learned", "fiction", "humor"]
    assert [tuple(e.x.shape) for e in smoke.train] == [(64, 32)] * 6 and [len(e) for e in smoke.test] == [32] * 6
    for exp in smoke.train + smoke.test:
        assert exp.y.shape == exp.x.shape and torch.equal(exp.x[:, 1:], exp.y[:, :-1])


# --------------------------------------------------------------------------- fixture files
def test_clinc_domains_oos_and_val_split(tmp_path):
    write_clinc(tmp_path)
    stream = build("clinc150", tmp_path, profile="full", fixed_domain_order=["travel", "meta", "banking"],
                   include_oos=True, eval_split="val")
    info = stream.info
    assert info.classes_per_exp == [[2, 3], [4, 5], [0, 1], [6]] and info.n_classes == 7
    assert info.extra["domain_order"] == ["travel", "meta", "banking", "oos"]
    assert [len(e) for e in stream.train] == [6, 6, 6, 2] and [len(e) for e in stream.test] == [4, 4, 4, 1]
    without = build("clinc150", tmp_path, profile="full", shuffle_domains=False)
    assert without.info.n_classes == 6 and without.info.extra["domain_order"] == ["banking", "travel", "meta"]
    assert [len(e) for e in without.test] == [4, 4, 4]  # 2 test rows per intent
    seeded = [build("clinc150", tmp_path, profile="full", seed=s).info.extra["domain_order"] for s in (0, 0, 3)]
    assert seeded[0] == seeded[1] and sorted(seeded[2]) == sorted(seeded[0])
    with pytest.raises(ConfigError, match="each CLINC150 domain once: banking, travel, meta"):
        build("clinc150", tmp_path, fixed_domain_order=["travel", "travel", "meta"])


def test_banking_seeded_class_order_and_word_vocabulary(tmp_path):
    categories = [f"intent_{i:02d}" for i in range(77)]
    write_banking(tmp_path, categories=categories)
    a, b = (build("banking77", tmp_path, profile="full", seed=1) for _ in range(2))
    check_class_il(a, 77, 7)
    assert all(torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a.train, b.train, strict=True))
    other = build("banking77", tmp_path, profile="full", seed=2)
    assert other.info.extra["class_order"] != a.info.extra["class_order"]
    assert sorted(a.info.extra["class_order"]) == list(range(77)) and all(len(c) == 11 for c in a.info.classes_per_exp)
    # The vocabulary comes from every experience's training texts, so it holds all 77 intent
    # numbers: [PAD], [UNK], where/oh/is/intent, "00".."76" and the row numbers "0".."3".
    assert a.info.extra["vocab_size"] == 2 + 4 + 77 + 4
    assert a.info.extra["vocabulary_sha256"] == other.info.extra["vocabulary_sha256"]
    fixed = build("banking77", tmp_path, profile="full", n_experiences=11, fixed_class_order=list(range(76, -1, -1)))
    assert fixed.info.classes_per_exp[0] == [76, 75, 74, 73, 72, 71, 70]
    write_banking(tmp_path, categories=categories[:10])
    with pytest.raises(CorruptDataError, match="banking77: the data has 10 classes, expected 77"):
        build("banking77", tmp_path)


def test_news_empty_posts_are_dropped_and_counted(tmp_path):
    groups = [f"g{i:02d}.topic" for i in range(20)]
    write_news(tmp_path, groups=groups)
    with pytest.warns(UserWarning, match=r"20news: dropped 20 texts with no word token \(train 0, test 20\)"):
        stream = build("20news", tmp_path, profile="full", max_len=3)
    check_class_il(stream, 20, 5)
    stats = stream.info.extra["text_stats"]
    assert stats["test"] == {"texts": 40, "kept": 20, "empty_dropped": 20, "truncated": 20}
    assert stats["train"] == {"texts": 60, "kept": 60, "empty_dropped": 0, "truncated": 60}
    assert sum(len(e) for e in stream.test) == 20


def test_brown_lm_on_fixture_split_vocabulary_and_unknown_chars(tmp_path):
    write_brown(tmp_path)
    stream = build("brown_lm", tmp_path, profile="full", genres=["news", "religion", "humor"], context=8,
                   test_fraction=0.34)
    stats = stream.info.extra["stats"]
    assert stats["news"]["train"]["files"] == ["ca01", "ca02"] and stats["news"]["test"]["files"] == ["ca03"]
    assert stats["religion"]["test"]["files"] == ["cd02"]
    # "3" occurs only in ca03 ("ca03", "CA03"), a test file: it maps to id 0 and is counted.
    assert "3" not in stream.info.extra["vocabulary"] and stats["news"]["test"]["unk_chars"] == 2
    assert stream.info.extra["vocabulary"][0] == "<unk>" and stream.info.input_shape == (8,)
    for exp in stream.train + stream.test:
        assert torch.equal(exp.x[:, 1:], exp.y[:, :-1])


def test_char_windows_and_genre_split():
    ids = torch.arange(20)
    x, y, tail = char_windows(ids, 6, 6)
    assert x.tolist() == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))] and tail == 1
    assert torch.equal(y, x + 1)
    x, _, tail = char_windows(ids, 6, 4)
    assert x[:, 0].tolist() == [0, 4, 8, 12] and tail == 1
    assert char_windows(ids, 19, 19)[0].shape == (1, 19) and char_windows(ids, 20, 20)[0].shape == (0, 20)
    files = [(f"f{i}", "") for i in range(9)]
    assert [f for f, _ in split_genre_files(files, 0.1)[1]] == ["f8"]
    assert len(split_genre_files(files, 0.3)[1]) == 3
    with pytest.raises(ConfigError, match="leaves no training file out of 1"):
        split_genre_files(files[:1], 0.1)


@pytest.mark.parametrize(("scenario", "key", "value", "message"), [
    ("banking77", "tokenizer", "bpe", "unknown tokenizer 'bpe'; accepted: word, minilm"),
    ("banking77", "n_experiences", 5, r"must divide the 77 classes: one of \[1, 7, 11, 77\]"),
    ("20news", "n_experiences", 3, r"one of \[1, 2, 4, 5, 10, 20\]"),
    ("clinc150", "eval_split", "dev", "eval_split must be 'test' or 'val'"),
    ("clinc150", "max_len", 2, "max_len=2 is too small"),
    ("clinc150", "train_per_class", 0, "train_per_class must be >= 1"),
    ("brown_lm", "genres", ["news", "poetry"], "accepted: adventure, belles_lettres"),
    ("brown_lm", "test_fraction", 1.0, r"test_fraction must be in \(0, 1\)"),
])
def test_bad_options_are_config_errors(scenario, key, value, message):
    overrides = {f"scenario.{key}": value}
    if key == "max_len":
        overrides["scenario.tokenizer"] = "minilm"
    with pytest.raises(ConfigError, match=message):
        resolve_config(scenario, "naive", profile="smoke", overrides=overrides)


def test_text_streams_default_to_the_hope_token_model():
    for name in ("clinc150", "banking77", "20news"):
        assert resolve_config(name, "naive", profile="smoke").model == "hope"


def test_text_cell_trains_end_to_end(tmp_path, one_torch_thread):
    """A clinc150 cell on fixture files: token ids through Avalanche into the default model."""
    from clbench.runner import run_cell

    write_clinc(tmp_path / "data")
    cfg = resolve_config("clinc150", "naive", profile="smoke", overrides={"scenario.max_len": 8})
    result = run_cell(cfg, tmp_path / "run", data_root=tmp_path / "data", progress=False)
    assert result["status"] == "ok", result["traceback"]
    assert np.array(result["matrix"]).shape == (3, 3)
