"""Tokenizers: train one on the training split, or wrap a pretrained one.

Every tokenizer is stored as a single ``tokenizer.json`` (the ``tokenizers``
library format) next to the model weights. Trained tokenizers have fixed
special ids: pad 0, bos 1, eos 2, unk 3. A pretrained tokenizer keeps its own
ids; its special tokens are looked up (and added when missing) and recorded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from textvae.config import TokenizerConfig
from textvae.errors import CheckpointError, ConfigError
from textvae.files import atomic_write

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


class Tokenizer:
    """A thin wrapper over :class:`tokenizers.Tokenizer` with fixed special tokens.

    ``encode`` returns ids without special tokens; the data pipeline adds bos/eos.
    """

    def __init__(self, backend: HFTokenizer, specials: dict[str, str] | None = None):
        self.backend = backend
        # Never let the backend add its own specials, pad or truncate: data.py owns that.
        self.backend.no_padding()
        self.backend.no_truncation()
        # Text that spells a special token ("</s>") is ordinary text, never an eos mid-sentence.
        self.backend.encode_special_tokens = True
        self.specials = dict(specials or {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK})
        ids = {}
        for role, token in self.specials.items():
            idx = backend.token_to_id(token)
            if idx is None:
                raise CheckpointError(f"tokenizer has no {role} token {token!r}")
            ids[role] = idx
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids["pad"], ids["bos"], ids["eos"], ids["unk"]
        self._control = {self.pad_id, self.bos_id, self.eos_id}
        # A pretrained encoder reads sentences through its own tokenizer (textvae/data.py: collate).
        self.encoder_tokenizer: Optional[EncoderTokenizer] = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id}

    def encode(self, text: str) -> list[int]:
        return self._plain(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._plain(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def _plain(self, ids: list[int]) -> list[int]:
        # A model piece that spells a control token (a unigram vocabulary holds "</s>") becomes unk.
        if self._control.isdisjoint(ids):
            return ids
        return [self.unk_id if i in self._control else i for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        stop = {self.pad_id, self.bos_id, self.eos_id}
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in stop:
                kept.append(i)
        # One sentence is one line: byte-level pieces can decode to newlines or tabs.
        return " ".join(self.backend.decode(kept, skip_special_tokens=False).split())

    def to_json(self) -> str:
        return self.backend.to_str()

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` through :func:`textvae.files.atomic_write`."""
        atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, specials: dict[str, str] | None = None) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file not found: {path}")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises plain Exceptions for bad JSON
            raise CheckpointError(f"tokenizer file {path} is damaged: {str(e).splitlines()[0][:200]}") from None
        return cls(backend, specials)


class EncoderTokenizer:
    """The tokenizer of a pretrained encoder (e.g. BERT's WordPiece), used for encoder inputs only.

    It adds the encoder's own special tokens ([CLS] ... [SEP]) and truncates to the encoder's
    position limit; ``batch`` pads a list of sentences into (ids, mask) tensors.
    """

    def __init__(self, backend: HFTokenizer, pad_id: int, max_length: int):
        self.backend = backend
        self.backend.no_padding()
        self.backend.enable_truncation(max_length)
        self.pad_id = pad_id
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def info(self) -> dict[str, int]:
        """What config.json records next to ``encoder_tokenizer.json``."""
        return {"pad_id": self.pad_id, "max_length": self.max_length, "vocab_size": self.vocab_size}

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentences -> ids (B, S) long and mask (B, S) bool (True on real tokens), right-padded."""
        rows = [e.ids for e in self.backend.encode_batch(list(texts))]
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask = torch.arange(S)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
        return ids, mask

    def to_json(self) -> str:
        return self.backend.to_str()

    @classmethod
    def from_json(cls, text: str, info: dict) -> "EncoderTokenizer":
        try:
            backend = HFTokenizer.from_str(text)
            return cls(backend, int(info["pad_id"]), int(info["max_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"encoder tokenizer settings are damaged: {e}") from None
        except Exception as e:  # the Rust library raises plain Exceptions for bad JSON
            raise CheckpointError(f"encoder tokenizer is damaged: {str(e).splitlines()[0][:200]}") from None


def _normalizer(cfg: TokenizerConfig) -> normalizers.Normalizer:
    steps = [normalizers.NFC()]
    if cfg.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def train_bpe(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Byte-level BPE: every string is encodable, so unk only appears through word dropout."""
    backend = HFTokenizer(models.BPE())
    backend.normalizer = _normalizer(cfg)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


def train_unigram(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Unigram LM tokenizer trained with sentencepiece, converted to a tokenizer.json."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with corpus.open("w", encoding="utf-8") as f:
            for t in texts:
                f.write(t.replace("\n", " ") + "\n")
        prefix = str(Path(tmp) / "spm")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=prefix,
            model_type="unigram",
            vocab_size=cfg.vocab_size,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece=PAD,
            bos_piece=BOS,
            eos_piece=EOS,
            unk_piece=UNK,
            character_coverage=1.0,
            normalization_rule_name="identity",
            hard_vocab_limit=False,
            minloglevel=2,
        )
        proc = spm.SentencePieceProcessor(model_file=prefix + ".model")
        vocab = [(proc.id_to_piece(i), proc.get_score(i)) for i in range(proc.get_piece_size())]
    # The same segmentation model, served by the tokenizers library so that checkpoints hold
    # one tokenizer.json whatever trained it.
    backend = HFTokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    backend.normalizer = _normalizer(cfg)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(backend)


def load_pretrained_tokenizer(name_or_path: str) -> Tokenizer:
    """Wrap a transformers tokenizer (folder or hub name); its special tokens become pad/bos/eos/unk."""
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name_or_path)
    except OSError:
        hint = "" if Path(name_or_path).exists() else " (the hub cannot be reached offline: give a local folder)"
        raise ConfigError(f"cannot load a pretrained tokenizer from {name_or_path!r}{hint}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"tokenizer {name_or_path!r} has no fast (tokenizers) version; textvae needs one")
    backend = HFTokenizer.from_str(backend.to_str())
    backend.post_processor = None
    roles = {
        "pad": hf.pad_token or PAD,
        "bos": hf.bos_token or hf.cls_token or BOS,
        "eos": hf.eos_token or hf.sep_token or EOS,
        "unk": hf.unk_token or UNK,
    }
    missing = [tok for tok in roles.values() if backend.token_to_id(tok) is None]
    if missing:
        backend.add_special_tokens(sorted(set(missing)))
    return Tokenizer(backend, roles)


def build_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None) -> Tokenizer:
    """Train (bpe/unigram) on ``texts`` or load the pretrained tokenizer named by ``cfg.path``."""
    if cfg.kind == "pretrained":
        return load_pretrained_tokenizer(str(cfg.path))
    if texts is None:
        raise ConfigError(f"tokenizer.kind {cfg.kind!r} needs training text")
    if cfg.kind == "bpe":
        return train_bpe(texts, cfg)
    return train_unigram(texts, cfg)
