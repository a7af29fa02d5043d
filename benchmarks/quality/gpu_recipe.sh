#!/usr/bin/env bash
# The quality comparison on a real MobileVLM (V2 1.7B by default) with real data, on a GPU server.
# Every method at one adapter budget, several seeds, scored with `mobilepeft eval` on each eval set.
# See benchmarks/quality/README.md for where the checkpoint and the data come from.
#
#   MODEL=ckpt/MobileVLM_V2-1.7B TRAIN=data/gqa_train_llava.json IMAGES=data \
#   EVALS="gqa|data/eval/gqa/llava_gqa_testdev_balanced.jsonl|data/eval/gqa/images|data/eval/gqa/testdev_balanced_questions.json" \
#   bash benchmarks/quality/gpu_recipe.sh
set -euo pipefail

MODEL=${MODEL:?MobileVLM checkpoint directory}
TRAIN=${TRAIN:?LLaVA-format training JSON}
IMAGES=${IMAGES:?image folder of TRAIN}
EVALS=${EVALS:?one or more "name|questions|image folder|answers file (or empty)" separated by spaces}
OUT=${OUT:-runs/quality-gpu}
LORA_RANK=${LORA_RANK:-128}           # MobileVLM's LoRA recipe for 1.7B: r=128, alpha=256, lr 1e-4
LR=${LR:-1e-4}
FULL_LR=${FULL_LR:-2e-5}      # LLaVA-style stage-II rate for full fine-tuning
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"full lora hydra hierarchical dynamic multihead dmlora adaring"}
BATCH=${BATCH:-16}            # per GPU
GLOBAL_BATCH=${GLOBAL_BATCH:-128}  # as MobileVLM's fine-tuning; accumulation fills it on any number of GPUs
GPUS=${GPUS:-1}               # GPUs of this node: more than one runs every `mobilepeft train` under torchrun
EPOCHS=${EPOCHS:-1}
PY=${PY:-python}

TRAIN_CMD=(mobilepeft train)
[ "$GPUS" -gt 1 ] && TRAIN_CMD=(torchrun --standalone --nproc-per-node "$GPUS" -m mobilepeft train)

mkdir -p "$OUT"
RING=$($PY -m benchmarks.quality.methods --model "$MODEL" --rank "$LORA_RANK" --ring-pattern --table "$OUT/budget.txt")
cat "$OUT/budget.txt"

for method in $METHODS; do
  case $method in
    full)         args=(--stage full --lr "$FULL_LR") ;;
    lora)         args=(--adapter lora --schedule fixed) ;;
    hydra)        args=(--adapter lora --schedule hydra) ;;
    hierarchical) args=(--adapter lora --schedule hierarchical) ;;
    dynamic)      args=(--adapter lora --schedule dynamic) ;;
    multihead)    args=(--adapter multihead --schedule fixed) ;;
    dmlora)       args=(--adapter dmlora --schedule fixed) ;;
    adaring)      args=(--adapter adaring --schedule fixed --ring-rank-pattern "$RING") ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
  for seed in $SEEDS; do
    run="$OUT/$method/seed$seed"
    if [ ! -d "$run/adapter" ] && [ ! -d "$run/model" ]; then  # not finished: start, or continue exactly
      # an unfinished run without a checkpoint starts over (--overwrite); one with a checkpoint continues
      resume=(--overwrite); [ -d "$run/checkpoints" ] && resume=(--resume)
      size=(--rank "$LORA_RANK" --alpha $((2 * LORA_RANK))); [ "$method" = adaring ] && size=()  # ring ranks set it
      "${TRAIN_CMD[@]}" --model "$MODEL" --data "$TRAIN" --image-folder "$IMAGES" --output-dir "$run" \
        "${size[@]}" --lr "$LR" --epochs "$EPOCHS" --batch-size "$BATCH" \
        --global-batch-size "$GLOBAL_BATCH" --precision bf16 --gradient-checkpointing --num-workers 4 --save-every 500 \
        --seed "$seed" "${args[@]}" "${resume[@]}"
    fi
    if [ "$method" = full ]; then weights=(--model "$run/model"); else weights=(--model "$MODEL" --adapter "$run/adapter"); fi
    for spec in $EVALS; do
      IFS='|' read -r name questions folder answers <<< "$spec"
      extra=(); [ -n "$answers" ] && extra=(--answers "$answers")
      [ -f "$run/eval-$name.json" ] || mobilepeft eval "${weights[@]}" --data "$questions" --image-folder "$folder" \
        "${extra[@]}" --batch-size 32 --max-new-tokens 16 --output "$run/answers-$name.jsonl" \
        --metrics-json "$run/eval-$name.json"
    done
  done
done
$PY -m benchmarks.quality.collect "$OUT"
