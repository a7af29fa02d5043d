"""load_vlm on real-format V1/V2 checkpoints equals an independent re-implementation; generation is
consistent with the full forward pass."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from reference_mobilevlm import reference_logits

import mobilepeft
from mobilepeft.data.template import build_prompt_ids


def _image(seed: int, size=(80, 56)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


@pytest.mark.parametrize("fixture", ["v1_bin_ckpt", "v2_sharded_ckpt"])
def test_logits_match_independent_reference(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    if fixture == "v2_sharded_ckpt":
        index = json.loads((ckpt / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1, "fixture must really be sharded"
    model = mobilepeft.load_vlm(ckpt)
    ids = build_prompt_ids("<image>\nWhat colour is the shape?", model.tokenizer)
    assert ids.count(-200) == 1
    pixels = model.preprocess_images([_image(0)])
    with torch.no_grad():
        ours = model(torch.tensor([ids]), pixel_values=pixels).logits[0]
    ref = reference_logits(ckpt, torch.tensor(ids), pixels)
    assert ours.shape == ref.shape == (len(ids) - 1 + model.config.num_image_tokens, model.tokenizer.vocab_size)
    assert (ours - ref).abs().max().item() <= 1e-4
    # text-only input
    text = build_prompt_ids("What colour is the shape?", model.tokenizer)
    with torch.no_grad():
        ours_t = model(torch.tensor([text])).logits[0]
    assert (ours_t - reference_logits(ckpt, torch.tensor(text), None)).abs().max().item() <= 1e-4


def test_batched_padded_forward_equals_single(v2_sharded_ckpt):
    """Right-padded batches with images in different slots give each sequence its own logits."""
    model = mobilepeft.load_vlm(v2_sharded_ckpt)
    tok = model.tokenizer
    a = build_prompt_ids("<image>\nHow many shapes are there?", tok)
    b = build_prompt_ids("Is it red?", tok) + tok.encode(" more text here to make it longer")
    pixels = model.preprocess_images([_image(1)])
    width = max(len(a), len(b))
    ids = torch.full((2, width), tok.pad_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, seq in enumerate((a, b)):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    with torch.no_grad():
        batch = model(ids, pixel_values=pixels, attention_mask=mask)
        single_a = model(torch.tensor([a]), pixel_values=pixels).logits[0]
        single_b = model(torch.tensor([b])).logits[0]
    assert (batch.logits[0, : single_a.shape[0]] - single_a).abs().max() <= 1e-4
    assert (batch.logits[1, : single_b.shape[0]] - single_b).abs().max() <= 1e-4
    assert int(batch.attention_mask[1].sum()) == len(b)


def test_greedy_generate_matches_no_cache_argmax(v1_bin_ckpt):
    """KV-cache decoding produces exactly the tokens of argmax over full re-computation, and batched
    (left-padded) generation equals one-by-one generation."""
    model = mobilepeft.load_vlm(v1_bin_ckpt)
    tok = model.tokenizer
    prompts = [build_prompt_ids("<image>\nWhich shape is shown?", tok),
               build_prompt_ids("<image>\nWhat colour is it? Answer with one word please.", tok)]
    pixels = model.preprocess_images([_image(2), _image(3)])
    steps = 6
    expected = []
    for i, p in enumerate(prompts):
        seq = list(p)
        for _ in range(steps):
            with torch.no_grad():
                logits = model(torch.tensor([seq]), pixel_values=pixels[i:i + 1]).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == tok.eos_id:
                break
            seq.append(nxt)
        expected.append(seq[len(p):])
    singles = [model.generate(p, pixels[i:i + 1], max_new_tokens=steps, eos_token_id=tok.eos_id)[0]
               for i, p in enumerate(prompts)]
    batched = model.generate(prompts, pixels, max_new_tokens=steps)
    assert singles == expected
    assert batched == expected
    assert all(len(e) > 0 for e in expected)


def test_preprocess_images_shape_and_range(tiny_ckpt):
    model = mobilepeft.load_vlm(tiny_ckpt)
    px = model.preprocess_images([_image(4, (30, 90)), _image(5, (64, 64))])
    assert px.shape == (2, 3, model.config.image_size, model.config.image_size)
    assert px.dtype == torch.float32
    assert -2.0 < float(px.min()) and float(px.max()) < 2.2
