"""The benchmark's base model: a tiny MobileVLM pretrained from scratch, MobileVLM's two stages.

Stage I trains the LDP projector alone on the pretraining corpus (the LLM is random and frozen);
stage II trains every LLM weight, the projector and the CLIP tower (``--stage full
--train-vision-tower``). MobileVLM freezes an ImageNet-scale CLIP tower; ours starts random, so
it is trained here, on the pretraining corpus only, to play that part: the downstream tasks then
meet a tower whose features were learnt for other images and questions (a frozen random tower
would leave every task to the projector). The tower stays frozen in fine-tuning, as in MobileVLM.
The result is cached under a key of every setting, so a rerun of the benchmark reuses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import cpu_model
from mobilepeft.presets import PRESETS, write_model
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer

from . import tasks


@dataclass(frozen=True)
class PretrainSettings:
    preset: str = "tiny-deep"
    train_vision_tower: bool = True
    n_train: int = 6000
    n_val: int = 200
    stage1_steps: int = 150
    stage1_lr: float = 2e-3
    stage2_steps: int = 1500
    stage2_lr: float = 1.5e-3
    batch_size: int = 16
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True) + "\n".join(tasks.corpus_lines())
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def pretrained_model(work: Path, settings: PretrainSettings, echo=print) -> tuple[Path, dict]:
    """The stage-II checkpoint (built once per settings key) and its pretraining record, which names the
    checkpoint's LLM depth so a results page is rendered from its JSON alone."""
    root = work / f"base-{settings.key()}"
    record_file = root / "pretrain.json"
    if record_file.is_file():
        echo(f"pretrained base model: cached at {root / 'stage2' / 'model'}")
        model = root / "stage2" / "model"
        return model, {**json.loads(record_file.read_text()), "llm_layers": _llm_layers(model), "cached": True}
    t0 = time.perf_counter()
    init = root / "init"
    if not (init / "config.json").is_file():
        write_model(PRESETS[settings.preset], init, seed=settings.seed, corpus=tasks.corpus_lines())
    corpus = root / "corpus"
    if not (corpus / "val.json").is_file():
        tasks.write_pretrain_corpus(corpus, n_train=settings.n_train, n_val=settings.n_val)
    common = dict(data=str(corpus / "train.json"), image_folder=str(corpus), eval_data=str(corpus / "val.json"),
                  batch_size=settings.batch_size, max_length=256, warmup_ratio=0.05, save_every=500,
                  eval_batch_size=50, log_every=25, seed=settings.seed, weight_decay=0.0)
    echo(f"pretraining stage I (projector only, {settings.stage1_steps} steps) -> {root / 'stage1'}")
    stage1 = Trainer(_config(model=str(init), output_dir=str(root / "stage1"), stage="pretrain",
                             max_steps=settings.stage1_steps, lr=settings.stage1_lr, **common)).run()
    tower = " + CLIP tower" if settings.train_vision_tower else ""
    echo(f"pretraining stage II (LLM + projector{tower}, {settings.stage2_steps} steps) -> {root / 'stage2'}")
    stage2 = Trainer(_config(model=str(init), output_dir=str(root / "stage2"), stage="full",
                             train_vision_tower=settings.train_vision_tower, projector=str(stage1.adapter_dir), max_steps=settings.stage2_steps,
                             lr=settings.stage2_lr, **common)).run()
    # The float kernels differ between CPU models, so the same settings pretrain a different base on each.
    record = {"settings": asdict(settings), "seconds": time.perf_counter() - t0, "cpu": cpu_model(),
              "stage1_val": stage1.eval_after, "stage2_val": stage2.eval_after}
    from mobilepeft.io import write_json

    write_json(record_file, record)
    echo(f"pretrained in {record['seconds']:.0f} s; corpus val accuracy {stage2.eval_after['accuracy']:.1%}")
    return stage2.adapter_dir, {**record, "llm_layers": _llm_layers(stage2.adapter_dir), "cached": False}


def _llm_layers(model_dir: Path) -> int:
    from mobilepeft.models.config import MobileVLMConfig

    return MobileVLMConfig.from_dir(model_dir).raw["num_hidden_layers"]


def _config(**values) -> TrainConfig:
    cfg = TrainConfig.from_flat(values)
    cfg.validate()
    return cfg
