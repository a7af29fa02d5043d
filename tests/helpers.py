"""Helpers shared by test modules."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import mobilepeft
from mobilepeft.data.template import build_prompt_ids
from mobilepeft.models.checkpoint import read_state_dict
from mobilepeft.models.config import MobileVLMConfig


def plain_llama(ckpt: Path) -> LlamaForCausalLM:
    """LlamaForCausalLM from the checkpoint's LLM weights only (what a PEFT user would build)."""
    cfg = MobileVLMConfig.from_dir(ckpt).llama_config()
    llm = LlamaForCausalLM(cfg)
    state = {k: v for k, v in read_state_dict(ckpt).items()
             if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
    llm.load_state_dict(state)
    return llm.eval()


def assert_peft_equal(ckpt: Path, peft_dir: Path, ours_adapter: Path | None = None, tol: float = 1e-4) -> None:
    """PEFT LoRA in ``peft_dir`` on a plain LlamaForCausalLM gives the text-only logits of
    ``load_vlm(ckpt, adapter=ours_adapter or peft_dir)``, and the adapter really changes the model."""
    from peft import PeftModel

    ours = mobilepeft.load_vlm(ckpt, adapter=ours_adapter or peft_dir)
    peft_model = PeftModel.from_pretrained(plain_llama(ckpt), str(peft_dir)).eval()
    ids = torch.tensor([build_prompt_ids("What shape is shown? Answer in one word.", ours.tokenizer)])
    with torch.no_grad():
        a = ours(ids).logits
        b = peft_model(input_ids=ids).logits
        base = plain_llama(ckpt)(input_ids=ids).logits
    assert (a - b).abs().max().item() <= tol
    assert (a - base).abs().max().item() > 1e-3, "adapter must actually change the model"


def train_adapter(ckpt: Path, data: Path, out: Path, method: str, steps: int, lr: float = 3e-3) -> Path:
    """A fixed-rank adapter of ``method`` trained ``steps`` steps on the synthetic set; returns its directory."""
    from mobilepeft.train.config import TrainConfig
    from mobilepeft.train.trainer import Trainer

    cfg = TrainConfig.from_flat(dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                      adapter=method, rank=4, alpha=8, max_steps=steps, batch_size=8, lr=lr, max_length=256,
                      save_every=0, schedule="fixed"))
    cfg.validate()
    Trainer(cfg, progress=False).run()
    return out / "adapter"


def val_questions(data: Path, n: int) -> list[tuple[str, Path]]:
    records = json.loads((data / "val.json").read_text())[:n]
    return [(r["conversations"][0]["value"], data / r["image"]) for r in records]


def greedy_reference(model, question: str, image: Path, max_new_tokens: int = 8) -> list[int]:
    """``model.generate`` greedy token ids for a question about an image."""
    from PIL import Image

    pixels = model.preprocess_images([Image.open(image)])
    return model.generate(build_prompt_ids(question, model.tokenizer), pixels, max_new_tokens=max_new_tokens)[0]


def piece_ids(tokenizer, pieces: list[str]) -> list[int]:
    """Token ids of the runner's decoded pieces (one SentencePiece piece each; byte pieces verbatim)."""
    sp = tokenizer._sp
    return [sp.PieceToId(p if p.startswith("<0x") else p.replace(" ", "\u2581")) for p in pieces]


def as_runner_pieces_see(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` as :func:`piece_ids` can read them back: MultimodalRunner decodes BOS (which an
    untrained model may generate) as " ", the same text as the "\u2581" piece."""
    blank = tokenizer._sp.PieceToId("\u2581")
    return [blank if i == tokenizer.bos_id else i for i in ids]


def assert_runner_generates_like_pytorch(bundle_dir: Path, ckpt: Path, adapter: Path | None, data: Path,
                                         n: int = 8) -> int:
    """ExecuTorch's MultimodalRunner on the bundle gives ``model.generate``'s greedy tokens for ``n``
    val questions; returns how many answers were non-empty (so callers can check the test has teeth)."""
    from mobilepeft.export.bundle import read_bundle
    from mobilepeft.export.executorch.runner import BundleRunner

    bundle = read_bundle(bundle_dir, verify="full")
    assert bundle.manifest["executorch"]["parity_rel_diff"] < 1e-3
    model = mobilepeft.load_vlm(ckpt, adapter=adapter)
    runner = BundleRunner(bundle)
    answered = 0
    for question, image in val_questions(data, n):
        expected = greedy_reference(model, question, image)
        got = runner.generate(question, image, max_new_tokens=8)
        assert piece_ids(model.tokenizer, got.pieces)[: len(expected)] == as_runner_pieces_see(model.tokenizer,
                                                                                             expected), question
        assert len(got.pieces) <= len(expected) + 1  # at most the EOS piece beyond
        answered += bool(expected)
    return answered


RUNNER_SOURCE = Path(__file__).resolve().parent.parent / "runner"


def build_native_runner(build_dir: Path) -> Path:
    """Configure and build runner/ (the native runner) against the installed executorch wheel; returns the binary.

    Uses the CMake (>= 3.28, the dev extra's) and Ninja next to this interpreter when present."""
    import shutil
    import subprocess
    import sys

    import executorch

    bin_dir = Path(sys.executable).parent
    cmake = shutil.which("cmake", path=str(bin_dir)) or shutil.which("cmake")
    ninja = shutil.which("ninja", path=str(bin_dir)) or shutil.which("ninja")
    configure = [cmake, "-S", str(RUNNER_SOURCE), "-B", str(build_dir),
                 f"-DCMAKE_PREFIX_PATH={list(executorch.__path__)[0]}"]
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    for command in (configure, [cmake, "--build", str(build_dir), "-j2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return build_dir / "mobilepeft_runner"


def foreign_adapter_files(ptd: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Adapter files that do not fit the bundle whose adapter file is ``ptd`` (written by ExecuTorch's own
    FlatTensor serializer), each with the tensor a refusal must name: a wrong shape, a missing and an
    extra tensor, float16, and the file truncated."""
    import numpy as np
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    from mobilepeft.export.executorch.ptd import read_tensors

    tensors = read_tensors(ptd)
    keys = sorted(tensors)

    def write(name: str, arrays: dict[str, np.ndarray]) -> Path:
        buffers, named = [], {}
        for i, (key, array) in enumerate(arrays.items()):
            t = torch.from_numpy(np.ascontiguousarray(array))
            buffers.append(t.numpy().tobytes())
            named[key] = DataEntry(buffer_index=i, alignment=16, tensor_layout=TensorLayout.from_tensor(t))
        path = tmp / name
        with path.open("wb") as fh:
            FlatTensorSerializer().serialize(DataPayload(buffers=buffers, named_data=named)).write_to_file(fh)
        return path

    tmp.mkdir(parents=True, exist_ok=True)
    wrong_shape = dict(tensors, **{keys[0]: np.zeros((tensors[keys[0]].shape[0], 2), np.float32)})
    missing = {k: v for k, v in tensors.items() if k != keys[1]}
    extra = dict(tensors, **{"decoder.layers.9.mlp.up_proj.lora_a_t": np.zeros((4, 4), np.float32)})
    half = dict(tensors, **{keys[2]: tensors[keys[2]].astype(np.float16)})
    truncated = tmp / "truncated.ptd"
    truncated.write_bytes(ptd.read_bytes()[:-100])
    return {"shape": (write("shape.ptd", wrong_shape), keys[0]), "missing": (write("missing.ptd", missing), keys[1]),
            "extra": (write("extra.ptd", extra), "decoder.layers.9.mlp.up_proj.lora_a_t"),
            "dtype": (write("dtype.ptd", half), keys[2]), "truncated": (truncated, "")}
