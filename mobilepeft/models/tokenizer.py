"""LLaMA-style tokenizer loading from a checkpoint directory.

MobileVLM checkpoints ship a SentencePiece ``tokenizer.model`` (LLaMA's); converted ones may
ship a ``tokenizer.json`` instead. Both are wrapped behind one small interface so the data
pipeline and generation never depend on which file a checkpoint has. ``encode`` never adds
special tokens: the conversation template places BOS/EOS explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

from mobilepeft.errors import UserError

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100


class Tokenizer:
    """Text <-> ids with LLaMA conventions (``<s>``=BOS, ``</s>``=EOS, pad = unk)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        sp_file = self.path / "tokenizer.model"
        json_file = self.path / "tokenizer.json"
        if sp_file.is_file():
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor()
            try:
                self._sp.Load(str(sp_file))
            except Exception as exc:  # sentencepiece raises OSError/RuntimeError variants
                raise UserError(f"cannot read SentencePiece model ({exc})", path=sp_file) from exc
            self._hf = None
            self.vocab_size = self._sp.GetPieceSize()
            self.bos_id = self._sp.bos_id()
            self.eos_id = self._sp.eos_id()
            self.unk_id = self._sp.unk_id()
            self.file = sp_file
        elif json_file.is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._hf = HFTokenizer.from_file(str(json_file))
            except Exception as exc:
                raise UserError(f"cannot read tokenizer.json ({exc})", path=json_file) from exc
            self._sp = None
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
            names = _special_token_names(self.path)
            self.bos_id = self._require_id(names.get("bos_token", "<s>"), json_file)
            self.eos_id = self._require_id(names.get("eos_token", "</s>"), json_file)
            self.unk_id = self._require_id(names.get("unk_token", "<unk>"), json_file)
            self.file = json_file
        else:
            raise UserError(
                "no tokenizer found (expected tokenizer.model or tokenizer.json)",
                path=self.path,
                hint="copy the tokenizer files of the base model into the checkpoint directory",
            )
        # LLaMA has no pad token; MobileVLM pads with unk, and padded positions are masked anyway.
        self.pad_id = self.unk_id

    def _require_id(self, token: str, file: Path) -> int:
        idx = self._hf.token_to_id(token)
        if idx is None:
            raise UserError(f"special token {token!r} is not in the vocabulary", path=file)
        return idx

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS."""
        if self._sp is not None:
            return list(self._sp.EncodeAsIds(text))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if i >= 0]
        if skip_special_tokens:
            special = {self.bos_id, self.eos_id, self.unk_id}
            ids = [i for i in ids if i not in special]
        if self._sp is not None:
            return self._sp.DecodeIds(ids)
        return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def save(self, out_dir: Path) -> None:
        """Copy the tokenizer files (and their configs, if any) into ``out_dir``."""
        import shutil

        out_dir = Path(out_dir)
        for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = self.path / name
            if src.is_file() and src.resolve() != (out_dir / name).resolve():
                shutil.copyfile(src, out_dir / name)


def _special_token_names(path: Path) -> dict[str, str]:
    """Special-token strings from tokenizer_config.json / special_tokens_map.json if present."""
    names: dict[str, str] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / fname
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        for key in ("bos_token", "eos_token", "unk_token"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and key not in names:
                names[key] = value
    return names
