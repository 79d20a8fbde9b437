"""Text parsers, tokenizers and checked downloads, on tiny fixture files written to tmp_path.

Fixture writers are shared with tests/test_text_scenarios.py.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clbench.errors import CorruptDataError, DataNotFoundError
from clbench.scenarios import text_data
from clbench.scenarios.download import RemoteFile, download_file, ensure_files, sha256_file
from clbench.scenarios.text_data import (
    MiniLMTokenizer,
    WordTokenizer,
    load_20newsgroups,
    load_banking77,
    load_brown,
    load_clinc150,
)

# --------------------------------------------------------------------------- fixture writers
CLINC_DOMAINS = {"banking": ["balance", "transfer"], "travel": ["book_flight", "visa"], "meta": ["greeting", "goodbye"]}


def write_clinc(root: Path, per_intent=(3, 2, 2), oos=(2, 1, 2)) -> Path:
    folder = root / "text" / "clinc150"
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in zip(("train", "val", "test"), per_intent, strict=True):
        data[split] = [[f"{split} {i} about {intent.replace('_', ' ')}", intent]
                       for intent in sum(CLINC_DOMAINS.values(), []) for i in range(n)]
    for split, n in zip(("oos_train", "oos_val", "oos_test"), oos, strict=True):
        data[split] = [[f"{split} {i} unrelated", "oos"] for i in range(n)]
    (folder / "domains.json").write_text(json.dumps(CLINC_DOMAINS, indent=4))
    (folder / "data_full.json").write_text(json.dumps(data, indent=4))
    return folder


BANKING_CATEGORIES = ["card_arrival", "top_up", "pin_blocked"]


def write_banking(root: Path, train_rows=None, test_rows=None, categories=None) -> Path:
    """Banking77's files; by default 4 train and 2 test rows per category."""
    folder = root / "text" / "banking77"
    folder.mkdir(parents=True, exist_ok=True)
    categories = categories or BANKING_CATEGORIES
    default = [f'"Where, oh where is {c.replace("_", " ")} {i}?",{c}' for i in range(4) for c in categories]
    (folder / "categories.json").write_text(json.dumps(categories))
    (folder / "train.csv").write_text("text,category\n" + "\n".join(train_rows or default) + "\n")
    (folder / "test.csv").write_text("text,category\n" + "\n".join(test_rows or default[: 2 * len(categories)]) + "\n")
    return folder


NEWS_GROUPS = ["comp.graphics", "rec.autos", "sci.space", "talk.politics.misc"]


def write_news(root: Path, per_group=(3, 2), extra_members=(), groups=None) -> Path:
    """A tiny 20news-bydate.tar.gz: header block, blank line, body. The first test post
    of each group has an empty body (dropped and counted when headers are stripped)."""
    folder = root / "text" / "20newsgroups"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "20news-bydate.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, text: str):
            payload = text.encode("latin-1")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for split, n in zip(("train", "test"), per_group, strict=True):
            for group in groups or NEWS_GROUPS:
                for i in range(n):
                    body = "" if (split == "test" and i == 0) else f"Posting {i} about {group.split('.')[1]} caf\xe9 stuff"
                    add(f"20news-bydate-{split}/{group}/{1000 + i}", f"From: a@b.c\nSubject: {group}\n\n{body}\n")
        for name, text in extra_members:
            add(name, text)
    return path


BROWN_FILES = {"ca01": "news", "ca02": "news", "ca03": "news", "cd01": "religion", "cd02": "religion", "cr01": "humor", "cr02": "humor"}


def write_brown(root: Path, bad_token: str | None = None) -> Path:
    folder = root / "text" / "nltk_data" / "corpora"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "brown.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("brown/cats.txt", "".join(f"{f} {g}\n" for f, g in BROWN_FILES.items()))
        for fid, genre in BROWN_FILES.items():
            lines = [f"\n\n\tThe/at {genre}/nn text/nn of/in {fid}/np ./.\n", f"\tA/at second/od line/nn ;/. {fid.upper()}/np\n"]
            if bad_token and fid == "cd02":
                lines.append(f"\t{bad_token} end/nn\n")
            archive.writestr(f"brown/{fid}", "".join(lines))
    return path


# --------------------------------------------------------------------------- parsers
def test_clinc_parses_domains_splits_and_oos(tmp_path):
    write_clinc(tmp_path)
    data = load_clinc150(tmp_path, download=False)
    assert data.class_names == ["balance", "transfer", "book_flight", "visa", "greeting", "goodbye", "oos"]
    assert {s: len(v) for s, v in data.splits.items()} == {
        "train": 18, "val": 12, "test": 12, "oos_train": 2, "oos_val": 1, "oos_test": 2}
    assert set(data.splits["oos_test"].labels.tolist()) == {6}
    assert data.splits["train"].texts[3] == "train 0 about transfer" and data.splits["train"].labels[3] == 1


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_clinc_bad_rows_name_file_and_line(tmp_path):
    folder = write_clinc(tmp_path)
    data = json.loads((folder / "data_full.json").read_text())
    data["test"][5] = ["only a text"]
    data["val"][2][1] = "no_such_intent"
    (folder / "data_full.json").write_text(json.dumps(data, indent=4))
    with pytest.raises(CorruptDataError) as info:
        load_clinc150(tmp_path, download=False)
    line = _line_of(folder / "data_full.json", '"no_such_intent"') - 2  # the row's "[" is two lines up
    assert f"data_full.json line {line}: val[2]" in str(info.value) and "no_such_intent" in str(info.value)
    data["val"][2][1] = "visa"
    (folder / "data_full.json").write_text(json.dumps(data, indent=4))
    with pytest.raises(CorruptDataError, match=r"line \d+: test\[5\] is \[\"only a text\"\], expected \[text, intent\]") as info:
        load_clinc150(tmp_path, download=False)
    assert f"line {_line_of(folder / 'data_full.json', 'only a text') - 1}:" in str(info.value)
    (folder / "data_full.json").write_text('{"train": [\n["a", "visa"],\n["b" "visa"]]}')
    with pytest.raises(CorruptDataError, match=r"data_full.json line 3: invalid JSON"):
        load_clinc150(tmp_path, download=False)
    (folder / "data_full.json").write_text('{"train": [], "val": {}}')
    with pytest.raises(CorruptDataError, match="data_full.json has no 'val' list"):
        load_clinc150(tmp_path, download=False)


def test_banking_parses_quoted_multiline_csv(tmp_path):
    write_banking(tmp_path, train_rows=['"Two\nlines, and a comma",top_up', "plain,pin_blocked"])
    names, splits = load_banking77(tmp_path, download=False)
    assert names == BANKING_CATEGORIES
    assert splits["train"].texts == ["Two\nlines, and a comma", "plain"] and splits["train"].labels.tolist() == [1, 2]


@pytest.mark.parametrize(("rows", "line", "message"), [
    (["ok,top_up", "too,many,fields"], 3, "3 fields, expected 2"),
    (["ok,top_up", "", "x,top_up"], 3, "0 fields"),
    (["ok,top_up", "ok,top_up", "text,unknown_intent"], 4, "category 'unknown_intent' is not in categories.json"),
    (['"bad "quote" here",top_up'], 2, "bad CSV"),
])
def test_banking_bad_rows_name_file_and_line(tmp_path, rows, line, message):
    folder = write_banking(tmp_path, train_rows=rows)
    with pytest.raises(CorruptDataError) as info:
        load_banking77(tmp_path, download=False)
    assert f"{folder / 'train.csv'} line {line}: " in str(info.value) and message in str(info.value)


def test_news_reads_the_tar_without_extracting(tmp_path):
    path = write_news(tmp_path)
    before = set(tmp_path.rglob("*"))
    groups, splits = load_20newsgroups(tmp_path, download=False)
    assert groups == NEWS_GROUPS and set(tmp_path.rglob("*")) == before
    assert len(splits["train"]) == 12 and np.bincount(splits["test"].labels).tolist() == [2, 2, 2, 2]
    assert splits["train"].texts[0] == "Posting 0 about graphics caf\xe9 stuff\n"  # latin-1, header gone
    _, kept = load_20newsgroups(tmp_path, download=False, strip_headers=False)
    assert kept["train"].texts[0].startswith("From: a@b.c\nSubject: comp.graphics\n\n")
    write_news(tmp_path, extra_members=[("20news-bydate-train/README", "x")])
    with pytest.raises(CorruptDataError, match="unexpected member '20news-bydate-train/README'"):
        load_20newsgroups(tmp_path, download=False)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptDataError, match="not a readable .tar.gz"):
        load_20newsgroups(tmp_path, download=False)


def test_brown_strips_tags_and_reports_bad_tokens(tmp_path):
    write_brown(tmp_path)
    corpus = load_brown(tmp_path, download=False)
    assert [f for f, _ in corpus["news"]] == ["ca01", "ca02", "ca03"] and corpus["adventure"] == []
    assert corpus["humor"][0][1] == "The humor text of cr01 .\nA second line ; CR01"
    write_brown(tmp_path, bad_token="untagged")
    with pytest.raises(CorruptDataError, match=r"brown.zip:brown/cd02 line 5: token 'untagged' is not word/tag"):
        load_brown(tmp_path, download=False)


# --------------------------------------------------------------------------- tokenizers
def test_word_vocabulary_counts_order_and_truncation():
    train = ["b a a", "c b a", "B d, d!", "e"]
    tok = WordTokenizer(train, min_count=2, max_size=5)
    assert tok.itos == ["[PAD]", "[UNK]", "a", "b", "d"]  # a:3, b:3 (alphabetical tie), d:2; c, e: once
    small = WordTokenizer(train, min_count=1, max_size=4)
    assert small.itos == ["[PAD]", "[UNK]", "a", "b"]
    encoded = tok.encode(["A b z", "?!", "a a a a a", "don't"], max_len=4)
    assert encoded.ids.tolist() == [[2, 3, 1, 0], [0, 0, 0, 0], [2, 2, 2, 2], [1, 0, 0, 0]]
    assert encoded.empty.tolist() == [False, True, False, False] and encoded.truncated == 1
    assert text_data.words("Don't STOP_me now, 2 times") == ["don't", "stop", "me", "now", "2", "times"]


def test_minilm_keeps_cls_sep_and_counts_truncation():
    tok = MiniLMTokenizer()
    assert tok.vocab_size == 30522 and tok.pad_id == 0
    encoded = tok.encode(["Hello world", "   ", "one two three four five six"], max_len=6)
    assert encoded.ids.tolist() == [[101, 7592, 2088, 102, 0, 0], [101, 102, 0, 0, 0, 0],
                                    [101, 2028, 2048, 2093, 2176, 102]]
    assert encoded.empty.tolist() == [False, True, False] and encoded.truncated == 1


def test_minilm_prefix_cut_equals_whole_text_tokenization():
    rng = np.random.RandomState(0)
    vocab = ["alpha", "unbelievably", "x", "tokenization", "caf\xe9", "2024", "--", "\n"]
    texts = [" ".join(rng.choice(vocab, size=n)) for n in (5, 40, 120, 400)] + ["a" * 3000 + " b"]
    tok = MiniLMTokenizer()
    for max_len in (8, 32):
        full = tok._pieces(texts)
        expected = [[101, *p[: max_len - 2], 102] + [0] * (max_len - len(p[: max_len - 2]) - 2) for p in full]
        encoded = tok.encode(texts, max_len)
        assert encoded.ids.tolist() == expected
        assert encoded.truncated == sum(len(p) > max_len - 2 for p in full)


def test_minilm_loads_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    backend = text_data._minilm_backend.__wrapped__()
    assert backend("hello")["input_ids"] == [101, 7592, 102]


# --------------------------------------------------------------------------- downloads
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_good_corrupt_and_missing(http_root, tmp_path):
    served, base = http_root
    (served / "good.txt").write_bytes(b"hello text\n")
    dest = tmp_path / "data" / "sub"
    saved = download_file(RemoteFile(f"{base}/good.txt", sha256(b"hello text\n")), dest / "good.txt", timeout=10)
    assert saved.read_bytes() == b"hello text\n"
    with pytest.raises(CorruptDataError) as info:
        download_file(RemoteFile(f"{base}/good.txt", "0" * 64), dest / "bad.txt", timeout=10)
    assert "bad.txt" in str(info.value) and sha256(b"hello text\n") in str(info.value) and "0" * 64 in str(info.value)
    with pytest.raises(DataNotFoundError, match=r"missing.txt from .*failed: HTTP 404"):
        download_file(RemoteFile(f"{base}/missing.txt", "0" * 64), dest / "missing.txt", timeout=10)
    assert sorted(p.name for p in dest.iterdir()) == ["good.txt"]  # nothing half-written left behind


def test_missing_files_with_downloads_off_name_path_and_source(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_banking77(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "text" / "banking77" / "train.csv") in message and "downloads are off" in message
    assert text_data.SOURCES["text/banking77"]["train.csv"].url in message and "CLBENCH_DATA" in message


def test_loader_downloads_missing_files_then_parses(http_root, tmp_path, monkeypatch):
    served, base = http_root
    fixture = write_banking(served)
    sources = {name: RemoteFile(f"{base}/text/banking77/{name}", sha256((fixture / name).read_bytes()))
               for name in ("train.csv", "test.csv", "categories.json")}
    monkeypatch.setitem(text_data.SOURCES, "text/banking77", sources)
    root = tmp_path / "fresh"
    names, splits = load_banking77(root, download=True)
    assert names == BANKING_CATEGORIES and len(splits["train"]) == 12
    assert sorted(p.name for p in (root / "text" / "banking77").iterdir()) == sorted(sources)
    ensure_files(root / "text" / "banking77", sources, download=False, dataset="x")  # present now: no error


def test_recorded_checksums_match_the_shared_copy():
    """SOURCES' sums are those of shared/data/SHA256SUMS (20 Newsgroups excepted: its
    download is scikit-learn's archive; the shared copy is a repack with its own sum)."""
    from tests.test_text_scenarios import REAL_ROOT, real_text_root

    real_text_root()
    recorded = dict(line.split()[::-1] for line in (REAL_ROOT / "SHA256SUMS").read_text().splitlines() if line.strip())
    for folder, files in text_data.SOURCES.items():
        for name, remote in files.items():
            shared_sum = recorded[f"./{folder}/{name}"]
            if folder == "text/20newsgroups":
                assert shared_sum != remote.sha256
            else:
                assert remote.sha256 == shared_sum, f"{folder}/{name}"
            assert sha256_file(REAL_ROOT / folder / name) == shared_sum, f"{folder}/{name} changed"
            assert remote.url.startswith("https://")
