"""HyDRA rank scheduling: budget invariants, τ = 0 is fixed LoRA, function-preserving resizes,
dynamic reallocation during training, exact resume, and adapters that still load everywhere."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from helpers import assert_peft_equal
from safetensors.torch import load_file

import mobilepeft
from mobilepeft.adapters.methods.dmlora import DMLoRALinear
from mobilepeft.adapters.methods.lora import LoRALinear
from mobilepeft.adapters.methods.multihead import MultiHeadLinear
from mobilepeft.adapters.summary import summarize_adapter
from mobilepeft.errors import UserError
from mobilepeft.merge import lower_adapter
from mobilepeft.schedule.branches import collect_branches, resize_branch, swap_in_optimizer
from mobilepeft.schedule.budget import (
    Bounds,
    BranchInfo,
    budget_of,
    check_allocation,
    hierarchical_targets,
    round_to_budget,
    spent,
)
from mobilepeft.schedule.scheduler import observed_loss_change
from mobilepeft.train.config import TrainConfig
from mobilepeft.train.trainer import Trainer


def _random_infos(seed: int) -> dict[str, BranchInfo]:
    rng = random.Random(seed)
    infos = {}
    for group, blocks in (("llm", 6), ("vision", 3)):
        for block in range(blocks):
            for t, (i, o) in {"q": (256, 256), "v": (256, 64), "up": (256, 704), "down": (704, 256)}.items():
                base = rng.choice([4, 8]) if t == "v" else 8  # heterogeneous base ranks, like multihead shares
                infos[f"{group}.{block}.{t}"] = BranchInfo(cost=i + o, base_rank=base, max_rank=min(i, o),
                                                           group=group, block=block)
    return infos


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 3.0])
def test_allocation_keeps_the_budget_bounds_and_granule(seed, temperature):
    infos = _random_infos(seed)
    rng = random.Random(100 + seed)
    sens = {n: rng.lognormvariate(0, 2) for n in infos}
    bounds = Bounds(r_min=2, r_max=32, granule=2)
    ranks = round_to_budget(hierarchical_targets(infos, sens, temperature), infos, bounds)
    check_allocation(ranks, infos, bounds)  # ≤ budget, bounds, multiples of g, < one granule unspent
    budget = budget_of(infos)
    assert spent(ranks, infos) <= budget
    assert budget - spent(ranks, infos) < 2 * max(i.cost for i in infos.values())
    if temperature == 0.0:
        assert ranks == {n: i.base_rank for n, i in infos.items()}, "τ = 0 must be fixed LoRA exactly"
    else:
        assert len(set(ranks.values())) > 1


def test_allocation_follows_sensitivity_per_parameter():
    infos = {f"llm.0.{t}": BranchInfo(cost=512, base_rank=8, max_rank=256, group="llm", block=0) for t in "abcd"}
    sens = {"llm.0.a": 1.0, "llm.0.b": 4.0, "llm.0.c": 16.0, "llm.0.d": 64.0}
    ranks = round_to_budget(hierarchical_targets(infos, sens, 0.5), infos, Bounds(2, 64, 2))
    assert ranks["llm.0.a"] < ranks["llm.0.b"] < ranks["llm.0.c"] < ranks["llm.0.d"]
    assert sum(ranks.values()) == 32


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_allocation_keeps_the_invariants_and_does_not_starve_wide_modules(seed):
    infos = _random_infos(seed)
    bounds = Bounds(r_min=2, r_max=32, granule=2)
    rng = random.Random(seed)
    for temperature in (0.0, 1.0):  # invariants and τ = 0 = fixed LoRA hold for both criteria
        sens = {n: rng.lognormvariate(0, 2) for n in infos}
        ranks = round_to_budget(hierarchical_targets(infos, sens, temperature, "rank"), infos, bounds)
        check_allocation(ranks, infos, bounds)
        if temperature == 0.0:
            assert ranks == {n: i.base_rank for n, i in infos.items()}
    # equal sensitivity everywhere: per rank unit leaves every branch at its fixed-LoRA rank, per
    # parameter moves rank from the wide MLP projections (cost 960) to the narrow v (cost 320)
    flat = dict.fromkeys(infos, 1.0)
    per_rank = round_to_budget(hierarchical_targets(infos, flat, 1.0, "rank"), infos, bounds)
    per_param = round_to_budget(hierarchical_targets(infos, flat, 1.0, "parameter"), infos, bounds)
    assert per_rank == {n: i.base_rank for n, i in infos.items()}
    wide = [n for n in infos if n.endswith((".up", ".down"))]
    assert sum(per_param[n] for n in wide) < sum(infos[n].base_rank for n in wide)


@pytest.mark.parametrize("seed", [0, 1])
def test_block_temperature_zero_keeps_every_blocks_budget(seed):
    """--block-temperature 0: each block spends what fixed LoRA gives it (within a granule of its widest branch)
    while its modules still split it by sensitivity; the default follows --temperature and moves budget between
    blocks whose sensitivities differ."""
    infos = _random_infos(seed)
    rng = random.Random(seed)
    # the first block of each group 30x as sensitive as the rest: the default split moves budget to it
    sens = {n: rng.lognormvariate(0, 1) * (30.0 if n.split(".")[1] == "0" else 1.0) for n in infos}
    bounds = Bounds(r_min=2, r_max=32, granule=2)

    def block_spend(ranks):
        out = {}
        for n, r in ranks.items():
            key = (infos[n].group, infos[n].block)
            out[key] = out.get(key, 0) + r * infos[n].cost
        return out

    fixed = block_spend({n: i.base_rank for n, i in infos.items()})
    kept = round_to_budget(hierarchical_targets(infos, sens, 1.0, block_temperature=0.0), infos, bounds)
    check_allocation(kept, infos, bounds)
    widest = 2 * max(i.cost for i in infos.values())
    assert all(abs(block_spend(kept)[k] - fixed[k]) <= widest for k in fixed)
    assert kept != {n: i.base_rank for n, i in infos.items()}  # the fine split still follows sensitivity
    skewed = round_to_budget(hierarchical_targets(infos, sens, 1.0), infos, bounds)
    first = [k for k in fixed if k[1] == 0]
    assert sum(block_spend(skewed)[k] for k in first) > sum(fixed[k] for k in first) + widest


def _trained(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in layer.own_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return layer.eval()


def _layers():
    torch.manual_seed(0)
    return {
        "lora": _trained(LoRALinear(torch.nn.Linear(48, 40), rank=8, alpha=16)),
        "multihead": _trained(MultiHeadLinear(torch.nn.Linear(48, 40), 4, 4, alpha=16)),
        "dmlora": _trained(DMLoRALinear(torch.nn.Linear(48, 40), rank=8, alpha=16, branches=4)),
    }


class _Holder(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.llm = torch.nn.Module()
        self.llm.proj = layer


@pytest.mark.parametrize("method", ["lora", "multihead", "dmlora"])
def test_growth_preserves_output_and_shrink_is_the_best_low_rank_approximation(method):
    layer = _layers()[method]
    holder = _Holder(layer)
    x = torch.randn(5, 48)
    with torch.no_grad():
        before = layer(x)
    for branch in collect_branches(holder).values():
        delta_before = branch.delta()
        assert resize_branch(branch, branch.rank + 4, generator=torch.Generator().manual_seed(1)) == "grow"
        assert torch.allclose(branch.delta(), delta_before, atol=1e-7)
        with torch.no_grad():
            assert (layer(x) - before).abs().max().item() <= 1e-6
        # shrink to 3: exactly the truncated SVD of the current ΔW
        u, s, vh = torch.linalg.svd(branch.delta().double())
        best = (u[:, :3] * s[:3]) @ vh[:3]
        assert resize_branch(branch, 3) == "shrink"
        assert branch.rank == 3 and branch.A.weight.shape == (3, branch.in_features)
        assert (branch.delta().double() - best).abs().max().item() <= 1e-5
        with torch.no_grad():
            before = layer(x)  # the next branch of a multihead layer starts from here
    if method == "dmlora":
        assert sum(layer.branch_sizes) == layer.rank == 3
    if method == "multihead":
        assert (layer.rank_parallel, layer.rank_sequential) == (3, 3) and layer.scaling == pytest.approx(2.0)


def test_optimizer_follows_a_resize():
    layer = _layers()["lora"]
    branch = collect_branches(_Holder(layer))["llm.proj"]
    opt = torch.optim.AdamW([layer.lora_A.weight, layer.lora_B.weight], lr=1e-2)
    layer.train()
    layer(torch.randn(4, 48)).sum().backward()
    opt.step()
    old_m = opt.state[layer.lora_A.weight]["exp_avg"].clone()
    resize_branch(branch, 12)
    swap_in_optimizer(opt, branch, "grow", 8)
    assert opt.param_groups[0]["params"][0] is layer.lora_A.weight
    state = opt.state[layer.lora_A.weight]
    assert torch.equal(state["exp_avg"][:8], old_m) and not state["exp_avg"][8:].any()
    assert (state["exp_avg_sq"][8:] > 0).all()
    v_mean = float(opt.state[layer.lora_A.weight]["exp_avg_sq"].mean())
    resize_branch(branch, 6)
    swap_in_optimizer(opt, branch, "shrink", 12)
    state = opt.state[layer.lora_A.weight]  # new basis: no first moment, a typical second one
    assert not state["exp_avg"].any() and torch.allclose(state["exp_avg_sq"], torch.full((6, 48), v_mean))
    opt.zero_grad()
    layer(torch.randn(4, 48)).sum().backward()
    opt.step()


def test_axis_moments_keep_each_features_step_size_through_a_resize():
    """--resize-moments axis: a change of basis mixes the rank axis only, so A's second moment keeps its mean per
    input feature and B's per output feature (here features of very different gradient scale), for a shrink's
    whole tensor and for a growth's new entries; the old entries of a growth keep their own moments."""
    layer = _layers()["lora"]
    branch = collect_branches(_Holder(layer))["llm.proj"]
    opt = torch.optim.AdamW([layer.lora_A.weight, layer.lora_B.weight], lr=1e-2)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    scale = torch.logspace(-2, 2, 48)  # input features whose activations (so A's gradients) differ 10^4-fold
    layer(torch.randn(16, 48) * scale).pow(2).sum().backward()
    opt.step()
    v_a = opt.state[layer.lora_A.weight]["exp_avg_sq"].clone()
    v_b = opt.state[layer.lora_B.weight]["exp_avg_sq"].clone()
    resize_branch(branch, 12)
    swap_in_optimizer(opt, branch, "grow", 8, "axis")
    a, b = (opt.state[layer.lora_A.weight]["exp_avg_sq"], opt.state[layer.lora_B.weight]["exp_avg_sq"])
    assert torch.equal(a[:8], v_a) and torch.equal(b[:, :8], v_b)
    assert torch.allclose(a[8:], v_a.mean(0).expand(4, -1)) and torch.allclose(b[:, 8:], v_b.mean(1, keepdim=True).expand(-1, 4))
    assert a[8:, -1].min() > 1e4 * a[8:, 0].max()  # per feature, not one tensor-wide value
    v_a, v_b = a.clone(), b.clone()
    resize_branch(branch, 6)
    swap_in_optimizer(opt, branch, "shrink", 12, "axis")
    state = opt.state[layer.lora_A.weight]
    assert not state["exp_avg"].any() and torch.allclose(state["exp_avg_sq"], v_a.mean(0).expand(6, -1))
    assert torch.allclose(opt.state[layer.lora_B.weight]["exp_avg_sq"], v_b.mean(1, keepdim=True).expand(-1, 6))


def _cfg(ckpt, data, out, **kw) -> TrainConfig:
    base = dict(model=str(ckpt), data=str(data / "train.json"), image_folder=str(data), output_dir=str(out),
                batch_size=8, lr=3e-3, max_length=256, save_every=0, log_every=1, probe_steps=2)
    base.update(kw)
    cfg = TrainConfig.from_flat(base)
    cfg.validate()
    return cfg


def _state(run_dir):
    return load_file(str(sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "trainable.safetensors"))


def test_temperature_zero_reproduces_fixed_lora_exactly(tiny_ckpt, synth_data, tmp_path):
    Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "fixed", max_steps=4, schedule="fixed"), progress=False).run()
    Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "h0", max_steps=4, schedule="hierarchical", temperature=0.0),
            progress=False).run()
    a, b = _state(tmp_path / "fixed"), _state(tmp_path / "h0")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hydra_run_reallocates_within_budget_without_spikes(tiny_ckpt, synth_data, tmp_path):
    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / "hydra", max_steps=60, schedule="hydra", realloc_every=4,
               realloc_window=[0.1, 0.8], batch_size=16, probe_steps=4)
    result = Trainer(cfg, progress=False).run()
    history = json.loads((tmp_path / "hydra" / "rank_history.json").read_text())
    events = history["events"]
    infos = {n: BranchInfo(cost=b["cost"], base_rank=b["base_rank"], max_rank=10**9, group=b["group"],
                           block=b["block"]) for n, b in history["branches"].items()}
    bounds = Bounds(history["bounds"]["r_min"], history["bounds"]["r_max"], history["bounds"]["granule"])
    for e in events:
        check_allocation(e["ranks"], infos, bounds, history["budget"])
    final = events[-1]["ranks"]
    assert len(set(final.values())) > 1, "ranks must be non-uniform"
    changes = sum(1 for a, b in zip(events, events[1:], strict=False) if a["ranks"] != b["ranks"])
    assert changes >= 2, f"ranks changed {changes} times"
    assert any(e["kind"] == "dynamic" and e["moves"] for e in events)
    assert any(e["observed_loss_change"] is not None for e in events), "the performance model saw outcomes"
    losses = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "hydra" / "metrics.jsonl").read_text()
                                                .splitlines()) if "loss" in r}
    realloc = [e["step"] for e in events if e["kind"] == "dynamic" and e["moves"]]
    worst = max(losses[s + 1] - losses[s] for s in realloc if s + 1 in losses)
    print(f"largest loss jump right after a reallocation: {worst:.4f}")
    assert worst < 0.5
    assert (tmp_path / "hydra" / "rank_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    conf = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert conf["rank_pattern"], "heterogeneous ranks are recorded for PEFT"
    info = summarize_adapter(result.adapter_dir)  # what `mobilepeft adapter info` prints
    assert info.nominal_rank == 8 and 0.98 < info.budget_ratio <= 1.0
    assert_peft_equal(tiny_ckpt, result.adapter_dir)


def test_veto_blocks_moves_predicted_within_the_loss_noise(tiny_ckpt, synth_data, tmp_path):
    def moves(veto: float) -> tuple[int, int]:
        out = tmp_path / f"veto{veto}"
        cfg = _cfg(tiny_ckpt, synth_data, out, max_steps=40, schedule="dynamic", realloc_every=4,
                   realloc_window=[0.1, 0.9], batch_size=16, veto=veto)
        Trainer(cfg, progress=False).run()
        history = json.loads((out / "rank_history.json").read_text())
        dynamic = [e for e in history["events"] if e["kind"] == "dynamic"]
        return sum(len(e["moves"]) for e in dynamic), len(dynamic)

    free, events = moves(0.0)
    vetoed, events_vetoed = moves(1e6)
    assert events == events_vetoed > 0
    assert free > 0 and vetoed == 0, (free, vetoed)


def test_block_move_scope_keeps_every_blocks_budget_through_the_dynamic_moves(tiny_ckpt, synth_data, tmp_path):
    """--move-scope block: a dynamic move takes rank only from the recipient's own block, so no block spends
    more than the allocation gave it; the default scope does move rank across blocks on the same run."""
    def block_spend(scope: str) -> tuple[list[dict], int]:
        out = tmp_path / scope
        cfg = _cfg(tiny_ckpt, synth_data, out, max_steps=40, schedule="hydra", realloc_every=4,
                   realloc_window=[0.1, 0.9], batch_size=16, move_scope=scope)
        Trainer(cfg, progress=False).run()
        history = json.loads((out / "rank_history.json").read_text())
        branches = history["branches"]
        spends = []
        for e in history["events"]:
            spend: dict[tuple, int] = {}
            for n, r in e["ranks"].items():
                key = (branches[n]["group"], branches[n]["block"])
                spend[key] = spend.get(key, 0) + r * branches[n]["cost"]
            spends.append(spend)
        moves = sum(len(e["moves"]) for e in history["events"] if e["kind"] == "dynamic")
        return spends[1:], moves  # from the hierarchical allocation on

    def above(spends: list[dict]) -> int:
        return sum(s[k] > spends[0][k] for s in spends[1:] for k in s)

    kept, moves = block_spend("block")
    assert moves > 0 and above(kept) == 0, "a block took rank from another block"
    assert any(s != kept[0] for s in kept), "moves inside the blocks happened"
    crossed, moves = block_spend("model")
    assert moves > 0 and above(crossed) > 0


@pytest.mark.parametrize("trend, curve", [("linear", lambda s: 3.0 - 0.01 * s),
                                           ("log", lambda s: 3.0 - 0.4 * math.log1p(s)),
                                           ("quadratic", lambda s: 3.0 - 0.05 * s + 0.0004 * s * s)])
def test_observed_loss_change_is_the_jump_off_the_trend(trend, curve):
    """The performance model's observation (and null_events.py's control): zero on a curve of the fitted
    family, the jump itself after a step change on it, None before anything follows the event."""
    every = 10
    clean = [(s, curve(s)) for s in range(60)]
    assert abs(observed_loss_change(clean, 30, every, trend)) < 1e-6
    jumped = [(s, v + (0.5 if s + 1 > 30 else 0.0)) for s, v in clean]
    assert abs(observed_loss_change(jumped, 30, every, trend) - 0.5) < 1e-6
    assert observed_loss_change(clean[:30], 30, every, trend) is None  # nothing after the event yet


def test_a_curved_trend_follows_a_flattening_fall_that_a_line_reads_as_a_rise():
    """With no move, a falling and flattening loss (the start of a run) looks like a rise to the linear trend;
    the log trend bends with it. Both see the same jump on top of it."""
    every = 10
    bent = [(s, 1.0 + 2.0 / math.sqrt(1 + s)) for s in range(60)]
    linear, log = (observed_loss_change(bent, 20, every, t) for t in ("linear", "log"))
    assert linear > 0.01 and abs(log) < linear / 3
    jumped = [(s, v + (0.2 if s + 1 > 20 else 0.0)) for s, v in bent]
    for trend, base in (("linear", linear), ("log", log)):
        assert abs(observed_loss_change(jumped, 20, every, trend) - base - 0.2) < 1e-6
    with pytest.raises(ValueError, match="unknown loss trend 'cubic'"):
        observed_loss_change(bent, 20, every, "cubic")


def test_hydra_resume_is_exact(tiny_ckpt, synth_data, tmp_path):
    common = dict(max_steps=16, schedule="hydra", realloc_every=3, realloc_window=[0.1, 0.9], save_every=8,
                  lora_dropout=0.1)

    class Crash(Exception):
        pass

    def crash(trainer, step, record):
        if step == 11:
            raise Crash

    straight = Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "straight", **common), progress=False).run()
    with pytest.raises(Crash):
        Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "resumed", **common), progress=False, callbacks=[crash]).run()
    resumed = Trainer(_cfg(tiny_ckpt, synth_data, tmp_path / "resumed", resume=True, **common), progress=False).run()
    assert resumed.steps == straight.steps == 16
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    h1, h2 = (json.loads((tmp_path / r / "rank_history.json").read_text())["events"] for r in ("straight", "resumed"))
    assert [e["ranks"] for e in h1] == [e["ranks"] for e in h2]
    assert sum(1 for e in h1 if e["kind"] == "dynamic" and e["moves"] and 8 < e["step"]) >= 1, \
        "a reallocation must happen after the resume point for this test to mean anything"


@pytest.mark.parametrize("method", ["multihead", "dmlora"])
def test_scheduled_multihead_and_dmlora_reload_and_lower_exactly(method, tiny_ckpt, synth_data, tmp_path):
    cfg = _cfg(tiny_ckpt, synth_data, tmp_path / method, adapter=method, max_steps=12, schedule="hydra",
               realloc_every=3, realloc_window=[0.1, 0.9], lr=1e-2)
    trainer = Trainer(cfg, progress=False)
    result = trainer.run()
    ids = torch.tensor([[1, 5, 9, 30, 40, 50]])
    with torch.no_grad():
        live = trainer.model.eval()(ids).logits
        reloaded = mobilepeft.load_vlm(tiny_ckpt, adapter=result.adapter_dir)(ids).logits
    assert (live - reloaded).abs().max().item() <= 1e-5
    ranks = json.loads((tmp_path / method / "rank_history.json").read_text())["events"][-1]["ranks"]
    assert len(set(ranks.values())) > 1
    assert_peft_equal(tiny_ckpt, lower_adapter(result.adapter_dir, tmp_path / "lora"), ours_adapter=result.adapter_dir)


def test_schedule_settings_are_validated(tiny_ckpt, synth_data, tmp_path):
    cfg = TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", adapter="adaring"))
    cfg.validate()
    assert cfg.schedule.kind == "fixed"  # the default, and the only schedule adaring has
    with pytest.raises(UserError, match="adaring has no per-module ranks"):
        TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", adapter="adaring", schedule="hydra")).validate()
    with pytest.raises(UserError, match="not a multiple of --rank-granule"):
        TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", rank=7, schedule="hydra")).validate()
    TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", rank=7)).validate()  # fixed: any rank
    with pytest.raises(UserError, match="must be one of"):
        TrainConfig.from_flat(dict(model="m", data="d.json", output_dir="o", schedule="magic")).validate()
