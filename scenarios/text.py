"""Text streams: three class-incremental intent/topic streams and a character-level
domain-incremental language-modelling stream (docs/text.md).

- `clinc150`: 10 experiences, one per CLINC150 domain (its 15 intents), official
  train / val / test split; the out-of-scope class is off unless `include_oos`.
- `banking77`: 7 experiences of 11 intents, seeded class order.
- `20news`: 5 experiences of 4 newsgroups, seeded class order.
- `brown_lm`: one experience per Brown genre; x and y are character windows.

Classification inputs are int64 token ids [max_len], padded with 0 (id 0 means
padding, for attention masks); labels keep their dataset index (class-IL, single
head). Texts with no token are dropped and counted, longer texts are cut to their
first tokens and counted: `info.extra["text_stats"]` holds both, per split.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from clbench.errors import ConfigError, CorruptDataError
from clbench.registry import register_scenario
from clbench.scenarios.stream import (
    ExperienceTensors,
    ScenarioInfo,
    TensorStream,
    class_order,
    per_class_subsample,
    subsample,
)
from clbench.scenarios.text_data import (
    BROWN_GENRES,
    TOKENIZERS,
    LabeledTexts,
    load_20newsgroups,
    load_banking77,
    load_brown,
    load_clinc150,
    make_tokenizer,
)


# --------------------------------------------------------------------------- options
def _check_positive_or_none(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 or None (all), got {value}")


@dataclass
class TextOptions:
    tokenizer: str = "word"  # "word" (vocabulary from the stream's training texts) or "minilm" (WordPiece)
    max_len: int = 64  # tokens per text, [CLS]/[SEP] included for minilm
    min_count: int = 2  # word tokenizer: a word needs this many training occurrences
    max_vocab: int = 20000  # word tokenizer: ids in all, [PAD] and [UNK] included
    train_per_class: int | None = None  # seeded subsample of each class (None: all)
    test_per_class: int | None = None

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; accepted: {', '.join(TOKENIZERS)}")
        if self.max_len < (3 if self.tokenizer == "minilm" else 1):
            raise ValueError(f"max_len={self.max_len} is too small for tokenizer {self.tokenizer!r}")
        if self.min_count < 1 or self.max_vocab < 3:
            raise ValueError(f"need min_count >= 1 and max_vocab >= 3, got {self.min_count} and {self.max_vocab}")
        _check_positive_or_none("train_per_class", self.train_per_class)
        _check_positive_or_none("test_per_class", self.test_per_class)


@dataclass
class ClincOptions(TextOptions):
    include_oos: bool = False  # adds out-of-scope (label 150) as an 11th, last experience
    eval_split: str = "test"  # "test" (30 per intent) or "val" (20 per intent) as the experiences' test set
    fixed_domain_order: list[str] | None = None  # domain names; default: seeded shuffle of the 10 domains
    shuffle_domains: bool = True  # False: domains.json order

    def __post_init__(self):
        super().__post_init__()
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}")


@dataclass
class SplitTextOptions(TextOptions):
    """Class-IL over a seeded class order, `n_experiences` equal groups of classes."""

    N_CLASSES: ClassVar[int] = 0
    n_experiences: int = 1
    fixed_class_order: list[int] | None = None
    shuffle_classes: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.n_experiences < 1 or self.N_CLASSES % self.n_experiences:
            divisors = [d for d in range(1, self.N_CLASSES + 1) if self.N_CLASSES % d == 0]
            raise ValueError(f"n_experiences={self.n_experiences} must divide the {self.N_CLASSES} classes: "
                             f"one of {divisors}")


@dataclass
class Banking77Options(SplitTextOptions):
    N_CLASSES: ClassVar[int] = 77
    n_experiences: int = 7  # 11 intents each


@dataclass
class NewsOptions(SplitTextOptions):
    N_CLASSES: ClassVar[int] = 20
    max_len: int = 256  # posts are long (see docs/text.md for how many are cut)
    n_experiences: int = 5  # 4 groups each
    strip_headers: bool = True  # drop the From/Subject/Organization block (it names people and groups)


# Our training defaults (no published protocol for these streams with the models here):
# Adam 1e-3, a few epochs; smoke is only for tests.
def _profiles(smoke: dict, quick: dict, epochs_quick: int, epochs_full: int) -> dict:
    train = {"optimizer": "adam", "lr": 1e-3, "train_mb_size": 32, "eval_mb_size": 512}
    return {
        "smoke": {"scenario": smoke, "train": {**train, "epochs": 1}},
        "quick": {"scenario": quick, "train": {**train, "epochs": epochs_quick}},
        "full": {"scenario": {}, "train": {**train, "epochs": epochs_full}},
    }


INTENT_SMOKE = {"train_per_class": 4, "test_per_class": 2, "max_len": 32}
CLINC_PROFILES = _profiles(INTENT_SMOKE, {"train_per_class": 40}, 3, 10)
BANKING_PROFILES = _profiles(INTENT_SMOKE, {"train_per_class": 60}, 3, 10)
NEWS_PROFILES = _profiles({"train_per_class": 4, "test_per_class": 2, "max_len": 64},
                          {"train_per_class": 150, "test_per_class": 100}, 2, 5)


# --------------------------------------------------------------------------- classification streams
def _subsample_texts(data: LabeledTexts, per_class: int | None, rng: np.random.RandomState) -> LabeledTexts:
    index, _ = per_class_subsample(torch.arange(len(data)), torch.from_numpy(data.labels), per_class, rng)
    return LabeledTexts([data.texts[i] for i in index.tolist()], data.labels[index.numpy()])


def _encode(tokenizer, data: LabeledTexts, max_len: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    encoded = tokenizer.encode(data.texts, max_len)
    keep = ~encoded.empty
    stats = {"texts": len(data), "kept": int(keep.sum()), "empty_dropped": int(encoded.empty.sum()),
             "truncated": encoded.truncated}
    return encoded.ids[torch.from_numpy(keep)], torch.from_numpy(data.labels[keep]), stats


def classification_stream(
    name: str, opts: TextOptions, seed: int, class_names: list[str], train: LabeledTexts,
    test: LabeledTexts, groups: list[list[int]], extra: dict,
) -> TensorStream:
    """Subsample per class, tokenize (the word vocabulary sees the kept training texts of
    every experience), drop and count empty texts, then one experience per class group."""
    rng = np.random.RandomState(seed)
    train = _subsample_texts(train, opts.train_per_class, rng)
    test = _subsample_texts(test, opts.test_per_class, rng)
    tokenizer = make_tokenizer(opts.tokenizer, train.texts, opts.min_count, opts.max_vocab)
    x_tr, y_tr, train_stats = _encode(tokenizer, train, opts.max_len)
    x_te, y_te, test_stats = _encode(tokenizer, test, opts.max_len)
    dropped = train_stats["empty_dropped"] + test_stats["empty_dropped"]
    if dropped:
        warnings.warn(f"{name}: dropped {dropped} texts with no {opts.tokenizer} token "
                      f"(train {train_stats['empty_dropped']}, test {test_stats['empty_dropped']}); "
                      "counted in info.extra['text_stats']", stacklevel=2)
    train_exps, test_exps = [], []
    for classes in groups:
        for x, y, out in ((x_tr, y_tr, train_exps), (x_te, y_te, test_exps)):
            mask = torch.isin(y, torch.tensor(classes))
            out.append(ExperienceTensors(x[mask], y[mask], 0))
    extra = {
        **extra, "vocab_size": tokenizer.vocab_size, "max_len": opts.max_len, "tokenizer": opts.tokenizer,
        "pad_id": tokenizer.pad_id, "class_names": class_names,
        "text_stats": {"train": train_stats, "test": test_stats},
    }
    if opts.tokenizer == "word":
        # Not the word list itself: it can hold 20,000 words and info.extra is stored with
        # every cell's result. Its SHA-256 identifies it (WordTokenizer rebuilds it).
        extra["vocabulary_sha256"] = hashlib.sha256("\n".join(tokenizer.itos).encode()).hexdigest()
    info = ScenarioInfo(name, "class_il", len(groups), len(class_names), (opts.max_len,), groups, extra=extra)
    return TensorStream(info, train_exps, test_exps)


@register_scenario(
    "clinc150", description="CLINC150 intents, class-IL: 10 experiences, one per domain (15 intents each)",
    scenario_type="class_il", options=ClincOptions, profiles=CLINC_PROFILES, default_model="hope",
)
def build_clinc150(opts: ClincOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    data = load_clinc150(data_root, download)
    names = list(data.domains)
    if opts.fixed_domain_order is not None:
        if sorted(opts.fixed_domain_order) != sorted(names):
            raise ConfigError(f"fixed_domain_order must list each CLINC150 domain once: {', '.join(names)}; "
                              f"got {opts.fixed_domain_order}")
        order = list(opts.fixed_domain_order)
    else:
        order = [names[i] for i in class_order(len(names), seed, None, opts.shuffle_domains)]
    index = {c: i for i, c in enumerate(data.class_names)}
    groups = [[index[intent] for intent in data.domains[d]] for d in order]
    train, test = data.splits["train"], data.splits[opts.eval_split]
    class_names = data.class_names[:-1]
    if opts.include_oos:
        order.append("oos")
        groups.append([index["oos"]])
        class_names = data.class_names
        train = _concat(train, data.splits["oos_train"])
        test = _concat(test, data.splits[f"oos_{opts.eval_split}"])
    extra = {"domain_order": order, "class_order": [c for g in groups for c in g], "eval_split": opts.eval_split}
    return classification_stream("clinc150", opts, seed, class_names, train, test, groups, extra)


def _concat(a: LabeledTexts, b: LabeledTexts) -> LabeledTexts:
    return LabeledTexts(a.texts + b.texts, np.concatenate([a.labels, b.labels]))


def _split_stream(name: str, opts: SplitTextOptions, seed: int, class_names: list[str], splits) -> TensorStream:
    if len(class_names) != opts.N_CLASSES:
        raise CorruptDataError(f"{name}: the data has {len(class_names)} classes, expected {opts.N_CLASSES}")
    order = class_order(len(class_names), seed, opts.fixed_class_order, opts.shuffle_classes)
    k = len(order) // opts.n_experiences
    groups = [order[e * k:(e + 1) * k] for e in range(opts.n_experiences)]
    return classification_stream(name, opts, seed, class_names, splits["train"], splits["test"], groups,
                                 {"class_order": order})


@register_scenario(
    "banking77", description="Banking77 intents, class-IL: 7 experiences of 11 intents, seeded class order",
    scenario_type="class_il", options=Banking77Options, profiles=BANKING_PROFILES, default_model="hope",
)
def build_banking77(opts: Banking77Options, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    return _split_stream("banking77", opts, seed, *load_banking77(data_root, download))


@register_scenario(
    "20news", description="20 Newsgroups (bydate, headers stripped), class-IL: 5 experiences of 4 groups, seeded order",
    scenario_type="class_il", options=NewsOptions, profiles=NEWS_PROFILES, default_model="hope",
)
def build_20news(opts: NewsOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    return _split_stream("20news", opts, seed, *load_20newsgroups(data_root, download, opts.strip_headers))


# --------------------------------------------------------------------------- Brown character LM
DEFAULT_GENRES = ("news", "religion", "hobbies", "learned", "fiction", "humor")
UNK_CHAR_ID = 0


@dataclass
class BrownOptions:
    genres: list[str] = field(default_factory=lambda: list(DEFAULT_GENRES))  # one experience each, in order
    context: int = 128  # characters per window (L)
    stride: int | None = None  # start-to-start distance of windows; None: `context` (no overlap)
    test_fraction: float = 0.1  # the last files of each genre (by file id) are its test text
    train_windows_per_exp: int | None = None  # seeded subsample of the windows (None: all)
    test_windows_per_exp: int | None = None

    def __post_init__(self):
        bad = [g for g in self.genres if g not in BROWN_GENRES]
        if bad or not self.genres or len(set(self.genres)) != len(self.genres):
            raise ValueError(f"genres must be distinct Brown genres, got {self.genres}; accepted: {', '.join(BROWN_GENRES)}")
        if self.context < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError(f"context and stride must be >= 1, got {self.context} and {self.stride}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check_positive_or_none("train_windows_per_exp", self.train_windows_per_exp)
        _check_positive_or_none("test_windows_per_exp", self.test_windows_per_exp)


_LM_TRAIN = {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "train_mb_size": 32, "eval_mb_size": 256}
BROWN_PROFILES = {
    "smoke": {"scenario": {"context": 32, "train_windows_per_exp": 64, "test_windows_per_exp": 32}, "train": _LM_TRAIN},
    "quick": {"scenario": {"train_windows_per_exp": 2000, "test_windows_per_exp": 250}, "train": _LM_TRAIN},
    "full": {"scenario": {}, "train": _LM_TRAIN},
}


def split_genre_files(files: list[tuple[str, str]], test_fraction: float) -> tuple[list, list]:
    """(train files, test files): the last max(1, round(test_fraction * n)) files are test."""
    n_test = max(1, round(test_fraction * len(files)))
    if n_test >= len(files):
        raise ConfigError(f"test_fraction={test_fraction} leaves no training file out of {len(files)}")
    return files[:-n_test], files[-n_test:]


def char_windows(ids: torch.Tensor, context: int, stride: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x [N, context], y [N, context], unused tail chars): y is x shifted by one character."""
    n = (len(ids) - 1 - context) // stride + 1 if len(ids) > context else 0
    starts = torch.arange(n) * stride
    positions = starts[:, None] + torch.arange(context)
    used = int(starts[-1]) + context + 1 if n else 0
    return ids[positions], ids[positions + 1], len(ids) - used


@register_scenario(
    "brown_lm", description="Brown corpus character LM, domain-IL: one experience per genre "
    "(news, religion, hobbies, learned, fiction, humor by default); metric: bits per character",
    scenario_type="domain_il", options=BrownOptions, profiles=BROWN_PROFILES, default_model="gru",
)
def build_brown_lm(opts: BrownOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    """Character-level language modelling, one Brown genre per experience.

    Each sample is a window of `context` consecutive characters of a genre's text:
    x = int64 ids [context] of characters t..t+L-1 and y = int64 ids [context] of
    characters t+1..t+L (the next character at every position), so a causal model
    is scored on all L positions; BPC is the mean of -log2 p(y) over them.
    Text: each file's `word/tag` tokens stripped of their tags, words joined by
    spaces, sentences by newlines, files by newlines. Each genre's files in id order
    are split train / test by `split_genre_files` (the last 10% of files are test).
    The vocabulary is every character of the stream's training text, sorted, after
    id 0, which stands for characters never seen in training (test only, counted).
    """
    corpus = load_brown(data_root, download)
    stride = opts.stride or opts.context
    files = {genre: split_genre_files(corpus[genre], opts.test_fraction) for genre in opts.genres}
    chars = sorted({c for genre in opts.genres for _, text in files[genre][0] for c in text})
    vocabulary = ["<unk>", *chars]
    to_id = np.full(max(map(ord, chars)) + 2, UNK_CHAR_ID, dtype=np.int64)  # last slot: any code beyond
    to_id[[ord(c) for c in chars]] = np.arange(1, len(vocabulary))
    rng = np.random.RandomState(seed)
    train, test, stats = [], [], {}
    for genre in opts.genres:
        stats[genre] = {}
        for split, split_files, out, n_windows in (
            ("train", files[genre][0], train, opts.train_windows_per_exp),
            ("test", files[genre][1], test, opts.test_windows_per_exp),
        ):
            text = "\n".join(t for _, t in split_files)
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            ids = torch.from_numpy(to_id[np.minimum(codes, len(to_id) - 1)])
            x, y, tail = char_windows(ids, opts.context, stride)
            if len(x) == 0:
                raise ConfigError(f"brown_lm: the {split} text of {genre!r} ({len(ids)} characters) is shorter "
                                  f"than one window of context={opts.context} + 1")
            stats[genre][split] = {"files": [f for f, _ in split_files], "chars": len(ids),
                                   "unk_chars": int((ids == UNK_CHAR_ID).sum()), "windows_total": len(x),
                                   "unused_tail_chars": tail}
            x, y = subsample(x, y, n_windows, rng)
            stats[genre][split]["windows_used"] = len(x)
            out.append(ExperienceTensors(x, y, 0))
    n = len(opts.genres)
    info = ScenarioInfo(
        "brown_lm", "domain_il", n, len(vocabulary), (opts.context,), [list(range(len(vocabulary)))] * n,
        metric_name="bpc", higher_is_better=False,
        extra={"vocab_size": len(vocabulary), "max_len": opts.context, "vocabulary": vocabulary,
               "unk_id": UNK_CHAR_ID, "genres": list(opts.genres), "stride": stride,
               "split": f"last max(1, round({opts.test_fraction} * files)) files of each genre (by file id) are test",
               "stats": stats},
    )
    return TensorStream(info, train, test)
