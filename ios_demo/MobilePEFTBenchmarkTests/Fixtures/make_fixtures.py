"""Write the iOS core's fixtures from mobilepeft's own Python code (run from the repository root):

    .venv/bin/python ios_demo/MobilePEFTBenchmarkTests/Fixtures/make_fixtures.py [--tokenizer-dir DIR]

DIR is any folder with a SentencePiece ``tokenizer.model`` (a checkpoint or a bundle); without it
the tiny LLaMA-style tokenizer ``mobilepeft init-model`` trains is used. Writes ``tokenizer.model``,
``manifest.json`` (the prompt/tokenizer/model/image sections CoreLogicTests reads) and
``core_cases.json`` (ids from ``Tokenizer.encode``/``decode``, ``build_prompt_ids`` and
``encode_sample``) beside this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from mobilepeft.data.llava import Conversation
from mobilepeft.data.template import SYSTEM_PROMPT, build_prompt_ids
from mobilepeft.errors import UserError
from mobilepeft.export.bundle import image_preprocessing_section, prompt_section
from mobilepeft.export.ort.batch import encode_sample
from mobilepeft.presets import train_tokenizer
from mobilepeft.models.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer

HERE = Path(__file__).resolve().parent
NUM_IMAGE_TOKENS = 4
SEQ_LEN = 64

TEXTS = [
    "",
    " ",
    "a",
    "  two  spaces  ",
    "Hello world",
    "hello\nworld",
    "tab\there",
    "What is in the picture?",
    "A red square.",
    "12345 apples",
    "café",
    "cafe\u0301",
    "日本語のテキスト",
    "emoji 🙂 ok",
    "</s> and <s>",
    "<image>",
    "USER: hi ASSISTANT:",
    SYSTEM_PROMPT,
    "\nWhat color is the car? ASSISTANT:",
]
QUESTIONS = [
    "<image>\nWhat is in the picture?",
    "What is in the picture? <image>",
    "No image here?",
    "  <image> spaced  ",
]
CONVERSATIONS = [
    [("<image>\nWhat is in the picture?", "A red square on a grey background.")],
    [("What colour is it?", "Red."), ("And the shape?", "A square.")],
    [("<image>\nDescribe it.", "word " * 40)],  # the answer is cut to fit SEQ_LEN
    [("<image>\nFirst?", "Yes."), ("Second turn that no longer fits " * 3, "dropped")],
]
TOO_LONG = [[("<image>\n" + "long question " * 30, "answer")]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.tokenizer_dir
        if folder is None:
            folder = Path(tmp)
            train_tokenizer(folder, 512)
        tokenizer = Tokenizer(folder)
        shutil.copyfile(folder / "tokenizer.model", HERE / "tokenizer.model")
        write(HERE / "manifest.json", manifest(tokenizer))
        write(HERE / "core_cases.json", cases(tokenizer))


def manifest(tokenizer: Tokenizer) -> dict:
    return {
        "format": "mobilepeft-bundle",
        "manifest_version": 1,
        "created_by": "make_fixtures.py",
        "model": {
            "family": "mobilevlm",
            "projector_type": "ldpnetv2",
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "vocab_size": tokenizer.vocab_size,
            "num_image_tokens": NUM_IMAGE_TOKENS,
            "mm_hidden_size": 8,
            "base_model": "fixture",
        },
        "tokenizer": {
            "file": "tokenizer.model",
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id,
        },
        "prompt": prompt_section(),
        "image_preprocessing": image_preprocessing_section(16),
        "max_seq_len": SEQ_LEN,
        "files": {},
    }


def cases(tokenizer: Tokenizer) -> dict:
    encode = [{"text": text, "ids": tokenizer.encode(text)} for text in TEXTS]
    decode = [{"ids": case["ids"], "text": tokenizer.decode(case["ids"])} for case in encode]
    # Special and negative ids are skipped (a generated answer ends with EOS, a prompt holds -200).
    specials = [
        tokenizer.bos_id,
        *encode[4]["ids"],
        tokenizer.unk_id,
        IMAGE_TOKEN_INDEX,
        *encode[5]["ids"],
        tokenizer.eos_id,
    ]
    decode.append({"ids": specials, "text": tokenizer.decode(specials)})
    prompts = [{"question": q, "ids": build_prompt_ids(q, tokenizer)} for q in QUESTIONS]
    rows = []
    for k, turns in enumerate(CONVERSATIONS):
        row = encode_sample(
            Conversation(id=str(k), index=k, image=None, turns=turns),
            tokenizer,
            num_image_tokens=NUM_IMAGE_TOKENS,
            seq_len=SEQ_LEN,
            pad_id=tokenizer.pad_id,
        )
        rows.append(
            {
                "turns": turns,
                "seq_len": SEQ_LEN,
                "input_ids": row.input_ids.tolist(),
                "attention_mask": row.attention_mask.tolist(),
                "labels": row.labels.tolist(),
            }
        )
    too_long = []
    for k, turns in enumerate(TOO_LONG):
        try:
            encode_sample(
                Conversation(id=str(k), index=k, image=None, turns=turns),
                tokenizer,
                num_image_tokens=NUM_IMAGE_TOKENS,
                seq_len=SEQ_LEN,
                pad_id=tokenizer.pad_id,
            )
        except UserError:
            too_long.append({"turns": turns, "seq_len": SEQ_LEN})
        else:
            raise SystemExit(f"expected {turns!r} to be too long for {SEQ_LEN}")
    return {"encode": encode, "decode": decode, "prompts": prompts, "rows": rows, "too_long": too_long}


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
