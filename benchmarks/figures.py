"""Every measured figure in README.md and docs/*.md, tied to the benchmark JSON it comes from.

Each :class:`Figure` is a piece of a document's text as written there, with every number replaced
by a ``{placeholder}``, the JSON file under ``docs/results/`` it comes from, and how each
placeholder is computed from that JSON. ``tests/test_doc_figures.py`` checks that every piece is
in its document exactly once with the numbers the JSON gives (whitespace, such as line breaks,
may differ); a figure edited by hand, a stale figure or a missing JSON fails it.

After re-running a benchmark, write its figures into the documents::

    python benchmarks/figures.py            # list figures that disagree with their JSON
    python benchmarks/figures.py --fix      # rewrite them from the JSON (prints old -> new)

Figures a benchmark has not (yet) produced JSON for are listed in :data:`UNCHECKED`, each with
the note the document must carry next to them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
if __package__ in (None, ""):  # `python benchmarks/figures.py`: the quality report's statistics are imported lazily
    sys.path.insert(0, str(ROOT))

Value = tuple[str, str] | Callable[[dict[str, Any]], str]


def get(data: dict[str, Any], path: str) -> Any:
    """``data["a"]["b"][0]`` for ``"a/b/0"``."""
    node: Any = data
    for part in path.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def fmt(value: Any, spec: str) -> str:
    """Format spec with unit prefixes: ``%.1f`` (x100), ``MB.2f`` (/1e6), ``KiB.0f``, ``MiB.0f``, ``GB.1f``,
    ``GiB.1f``, ``min.1f`` (seconds / 60), ``short.1e`` (``1.4e-2``), ``pm.1f`` (a signed difference: ``+2.6``, ``−1.8`` with a minus sign)."""
    scales = {"%": 100.0, "MB": 1e-6, "KiB": 1 / 1024, "MiB": 1 / 2**20, "GB": 1e-9, "GiB": 1 / 2**30,
              "min": 1 / 60}
    for unit, scale in scales.items():
        if spec.startswith(unit):
            return format(value * scale, spec[len(unit):])
    if spec.startswith("KB"):
        return format(value / 1e3, spec[2:])
    if spec.startswith("short"):  # 1.4e-2 rather than Python's 1.4e-02 (prose; program output keeps its own)
        return re.sub(r"e([-+])0(\d)", r"e\1\2", format(value, spec[5:])).replace("e+", "e")
    if spec.startswith("pm"):
        text = format(value, "+" + spec[2:])
        return text.replace("-", "−")
    return format(value, spec)


@dataclass(frozen=True)
class Figure:
    doc: str                      # path from the repository root
    text: str                     # the document's text, numbers as {placeholders}
    json: str                     # file name under docs/results/
    values: dict[str, Value] = field(default_factory=dict)  # placeholder -> (key path, format) or fn(json)

    def placeholders(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.text)

    def render_values(self, data: dict[str, Any]) -> dict[str, str]:
        out = {}
        for name in self.placeholders():
            spec = self.values[name]
            out[name] = spec(data) if callable(spec) else fmt(get(data, spec[0]), spec[1])
        return out

    def render(self, data: dict[str, Any]) -> str:
        values = self.render_values(data)
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], self.text)

    def pattern(self) -> re.Pattern[str]:
        """The text with any number where a placeholder is and any whitespace where whitespace is."""
        parts = re.split(r"(\{\w+\})", self.text)
        regex = ""
        for part in parts:
            if re.fullmatch(r"\{\w+\}", part):
                regex += rf"(?P<{part[1:-1]}>[^\s|*]+)"
            else:
                regex += r"\s+".join(re.escape(chunk) for chunk in re.split(r"\s+", part)) if part.strip() else \
                    (r"\s+" if part else "")
        return re.compile(regex)


def load(name: str, root: Path = ROOT) -> dict[str, Any]:
    return json.loads((root / "docs" / "results" / name).read_text())


# ----------------------------------------------------------------------------------------------
# helpers for derived values (computed from the JSON, never typed in)

def quality_mean(task: str, method: str, key: str = "accuracy_mean") -> Callable[[dict], str]:
    return lambda d: f"{100 * d['summary'][task][method][key]:.1f}"


def quality_diff(task: str, a: str, b: str, se: bool = False) -> Callable[[dict], str]:
    """Mean accuracy difference a - b in points (signed), or with ``se`` its standard error."""
    def value(d: dict) -> str:
        sa, sb = d["summary"][task][a], d["summary"][task][b]
        if se:
            return f"{100 * (sa['accuracy_std'] ** 2 / sa['n_seeds'] + sb['accuracy_std'] ** 2 / sb['n_seeds']) ** 0.5:.1f}"
        return fmt(100 * (sa["accuracy_mean"] - sb["accuracy_mean"]), "pm.1f")
    return value


def final_train_loss(task: str, methods: tuple[str, ...]) -> Callable[[dict], str]:
    """Mean over seeds of the final training loss; a range ``a–b`` over several methods."""
    def value(d: dict) -> str:
        means = [statistics.fmean(r["final_train_loss"] for r in d["runs"] if r["task"] == task and r["method"] == m)
                 for m in methods]
        lo, hi = f"{min(means):.2f}", f"{max(means):.2f}"
        return lo if lo == hi else f"{lo}–{hi}"
    return value


def ratio(a: str, b: str, spec: str) -> Callable[[dict], str]:
    return lambda d: fmt(get(d, a) / get(d, b), spec)


# ----------------------------------------------------------------------------------------------

#: the first version of the quality benchmark (4 blocks, a random tower, two tasks, one learning rate), which
#: docs/hydra.md and docs/methods.md still discuss; the current whole table is quality.json (docs/results.md)
QUALITY_V1 = "quality_v1.json"


def _train_time_ratio(a: str, b: str) -> Callable[[dict], str]:
    """Mean train time per run over both tasks, ``a`` over ``b`` (the table's "Train time / run")."""
    def value(d: dict) -> str:
        t = {m: statistics.fmean(d["summary"][task][m]["train_seconds_mean"] for task in d["settings"]["tasks"])
             for m in (a, b)}
        return f"{t[a] / t[b]:.2f}"
    return value


QUALITY = [
    Figure("docs/hydra.md", "`make bench-quality` at the time, {minutes} min on 2 CPU cores)", QUALITY_V1,
           {"minutes": ("wall_seconds", "min.0f")}),
    Figure("docs/hydra.md", "**HyDRA does not beat fixed-rank LoRA there**: {hd} ± {hds}% against {ld} ± {lds}% on "
           "digits and {hr} ± {hrs}% against {lr} ± {lrs}% on relations ({dd} and {dr} points",
           QUALITY_V1,
           {"hd": quality_mean("digits", "hydra"), "hds": quality_mean("digits", "hydra", "accuracy_std"),
            "ld": quality_mean("digits", "lora"), "lds": quality_mean("digits", "lora", "accuracy_std"),
            "hr": quality_mean("relations", "hydra"), "hrs": quality_mean("relations", "hydra", "accuracy_std"),
            "lr": quality_mean("relations", "lora"), "lrs": quality_mean("relations", "lora", "accuracy_std"),
            "dd": quality_diff("digits", "hydra", "lora"), "dr": quality_diff("relations", "hydra", "lora")}),
    Figure("docs/hydra.md", "Hierarchical allocation only: {hd} (digits) and {hr} (relations) points against LoRA; "
           "dynamic reallocation only: {dd} and {dr}.", QUALITY_V1,
           {"hd": quality_diff("digits", "hierarchical", "lora"), "hr": quality_diff("relations", "hierarchical", "lora"),
            "dd": quality_diff("digits", "dynamic", "lora"), "dr": quality_diff("relations", "dynamic", "lora")}),
    Figure("docs/hydra.md", "final training loss on digits {h} (hydra), {hi} (hierarchical), {dy} (dynamic) against "
           "{f} for fixed LoRA; {sched} against {fr} on relations.", QUALITY_V1,
           {"h": final_train_loss("digits", ("hydra",)), "hi": final_train_loss("digits", ("hierarchical",)),
            "dy": final_train_loss("digits", ("dynamic",)), "f": final_train_loss("digits", ("lora",)),
            "sched": final_train_loss("relations", ("hydra", "hierarchical", "dynamic")),
            "fr": final_train_loss("relations", ("lora",))}),
    Figure("docs/methods.md", "they separate: Hydra multi-head {md} / {mr}%, LoRA {ld} / {lr}%, DMLoRA {dd} / {dr}%, "
           "AdaRing {ad} / {ar}% (digits / relations).", QUALITY_V1,
           {f"{k}{t[0]}": quality_mean(t, m) for k, m in (("m", "multihead"), ("l", "lora"), ("d", "dmlora"),
                                                           ("a", "adaring")) for t in ("digits", "relations")}),
    Figure("docs/methods.md", "(final training loss {d} and {a} against LoRA's {l}).", QUALITY_V1,
           {"d": final_train_loss("digits", ("dmlora",)), "a": final_train_loss("digits", ("adaring",)),
            "l": final_train_loss("digits", ("lora",))}),
    Figure("docs/methods.md", "({diff} ± {se} points, within two standard errors), at {more}% more parameters and "
           "{time}x its training time.", QUALITY_V1,
           {"diff": quality_diff("digits", "multihead", "lora"), "se": quality_diff("digits", "multihead", "lora", se=True),
            "more": lambda d: f"{100 * (d['budget']['methods']['multihead']['adapter_parameters'] / d['budget']['methods']['lora']['adapter_parameters'] - 1):.0f}",
            "time": _train_time_ratio("multihead", "lora")}),
]

def _chosen_val_accuracy(method: str) -> Callable[[dict], str]:
    """Mean validation accuracy of the candidate the search chose for ``method``."""
    def value(d: dict) -> str:
        chosen = d["search"]["chosen"][method]
        c = next(c for c in d["search"]["candidates"][method]
                 if c["lr"] == chosen["lr"] and c["knobs"] == chosen["knobs"])
        return f"{100 * c['val_accuracy_mean']:.1f}"
    return value


def _best_val_at_default_scale(method: str) -> Callable[[dict], str]:
    """The best mean validation accuracy among ``method``'s search candidates at its default adapter scale."""
    return lambda d: f"{100 * max(c['val_accuracy_mean'] for c in d['search']['candidates'][method] if 'alpha_factor' not in c['knobs']):.1f}"


def _candidate_val(method: str, lr: float | None = None, knobs: dict[str, Any] | None = None) -> Callable[[dict], str]:
    """Mean validation accuracy of ``method``'s search candidate at ``lr`` (default: the chosen one) with ``knobs``
    (default: none, the method's defaults)."""
    def value(d: dict) -> str:
        pick = lr if lr is not None else d["search"]["chosen"][method]["lr"]
        found = [c for c in d["search"]["candidates"][method] if c["lr"] == pick and c["knobs"] == (knobs or {})]
        return f"{100 * found[0]['val_accuracy_mean']:.1f}"
    return value


def _train_loss(method: str, task: str) -> Callable[[dict], str]:
    """A method's training loss at the last step on one task, mean over its test runs' seeds."""
    def value(d: dict) -> str:
        losses = [r["final_train_loss"] for r in d["runs"] if r["method"] == method and r["task"] == task]
        return f"{statistics.fmean(losses):.2f}"
    return value


def _chosen_scale(method: str) -> Callable[[dict], str]:
    """The adapter scale s the search chose for ``method``: its default times the chosen ``alpha_factor``."""
    return lambda d: f"{d['search']['scales'][method]['default'] * d['search']['chosen'][method]['knobs'].get('alpha_factor', 1.0):g}"


def _lowest_seed(method: str, task: str) -> Callable[[dict], str]:
    """The lowest test accuracy among ``method``'s seeds on ``task``."""
    return lambda d: f"{100 * min(r['scores']['overall']['exact_match'] for r in d['runs'] if r['method'] == method and r['task'] == task):.1f}"


def _mean_diff_over_tasks(a: str, b: str) -> Callable[[dict], str]:
    def value(d: dict) -> str:
        diffs = [d["summary"][t][a]["accuracy_mean"] - d["summary"][t][b]["accuracy_mean"] for t in d["settings"]["tasks"]]
        return fmt(100 * statistics.fmean(diffs), "pm.1f")
    return value


def _val_mean(method: str) -> Callable[[dict], str]:
    """Validation accuracy of ``method``'s test runs: mean over seeds, then over tasks."""
    def value(d: dict) -> str:
        per_task = [statistics.fmean(r["val_scores"]["overall"]["exact_match"] for r in d["runs"]
                                     if r["task"] == t and r["method"] == method) for t in d["settings"]["tasks"]]
        return f"{100 * statistics.fmean(per_task):.1f}"
    return value


ABLATION = "quality_hydra_ablation.json"
#: (label, method, results JSON): the later variant ran on its own, reusing the ablation's cached runs
ABLATION_ROWS = (("LoRA (fixed rank 8)", "lora", ABLATION), ("HyDRA (`--schedule hydra`)", "hydra", ABLATION),
                 ("hierarchical only", "hierarchical", ABLATION), ("`--allocation rank`", "hydra_rank", ABLATION),
                 ("`--veto 1`", "hydra_veto", ABLATION),
                 ("`--realloc-window 0.25,0.7`", "hydra_late", "quality_hydra_late.json"))


def _ablation_rows() -> list[Figure]:
    out = []
    for label, method, source in ABLATION_ROWS:
        diff = "—" if method == "lora" else "{diff}"
        out.append(Figure("docs/hydra.md", f"| {label} | {{d}} ± {{ds}} | {{r}} ± {{rs}} | {diff} | {{val}} |", source,
                          {"d": quality_mean("digits", method), "ds": quality_mean("digits", method, "accuracy_std"),
                           "r": quality_mean("relations", method), "rs": quality_mean("relations", method, "accuracy_std"),
                           "diff": _mean_diff_over_tasks(method, "lora"), "val": _val_mean(method)}))
    return out


def _event_rows() -> list[Figure]:
    out = []
    for label, method, source in ABLATION_ROWS[1:]:
        events = source.replace(".json", "_events.json")
        for task in ("digits", "relations"):
            key = f"events/{method}/{task}"
            values: dict[str, Value] = {"moves": (f"{key}/moves_per_run", ".1f"), "n": (f"{key}/events_observed", "d"),
                                        "att": (f"{key}/attention_rank_mean", ".1f"),
                                        "mlp": (f"{key}/mlp_rank_mean", ".1f")}
            if method == "hierarchical":
                text = f"| {label}, {task} | {{moves}} | {{n}} | — | — | — | — | {{att}} / {{mlp}} |"
            else:
                later = "{later} ± {se}" if method != "hydra_veto" else "—"
                down = "{down} of {n2}" if method != "hydra_veto" else "—"
                text = f"| {label}, {task} | {{moves}} | {{n}} | {{pred}} | {{first}} | {later} | {down} | {{att}} / {{mlp}} |"
                values.update({"pred": (f"{key}/predicted_mean", "pm.3f"), "first": (f"{key}/first_observed_mean", "pm.3f"),
                               "later": (f"{key}/later_observed_mean", "pm.3f"), "se": (f"{key}/later_observed_se", ".3f"),
                               "down": (f"{key}/later_decreases", "d"), "n2": (f"{key}/later_events", "d")})
            out.append(Figure("docs/hydra.md", text, events, values))
    return out


QUALITY_SEARCH = [
    Figure("docs/hydra.md", "docs/results/quality_hydra_ablation.json`, {minutes} min on 2 CPU cores). The search "
           "chose learning rate {llr} for LoRA and {hlr} at temperature {ht} for HyDRA (mean validation accuracy "
           "{lv}% and {hv}%). On test, HyDRA scores {hd} ± {hds}% against LoRA's {ld} ± {lds}% on digits "
           "({dd} ± {dse} points) and {hr} ± {hrs}% against {lr} ± {lrs}% on relations ({dr} ± {rse}): a "
           "mean of {mean} points over the two tasks", ABLATION,
           {"minutes": ("wall_seconds", "min.0f"),
            "llr": ("search/chosen/lora/lr", "g"), "hlr": ("search/chosen/hydra/lr", "g"),
            "ht": ("search/chosen/hydra/knobs/temperature", "g"),
            "lv": _chosen_val_accuracy("lora"), "hv": _chosen_val_accuracy("hydra"),
            "hd": quality_mean("digits", "hydra"), "hds": quality_mean("digits", "hydra", "accuracy_std"),
            "ld": quality_mean("digits", "lora"), "lds": quality_mean("digits", "lora", "accuracy_std"),
            "hr": quality_mean("relations", "hydra"), "hrs": quality_mean("relations", "hydra", "accuracy_std"),
            "lr": quality_mean("relations", "lora"), "lrs": quality_mean("relations", "lora", "accuracy_std"),
            "dd": quality_diff("digits", "hydra", "lora"), "dse": quality_diff("digits", "hydra", "lora", se=True),
            "dr": quality_diff("relations", "hydra", "lora"), "rse": quality_diff("relations", "hydra", "lora", se=True),
            "mean": _mean_diff_over_tasks("hydra", "lora")}),
    Figure("README.md", "it drew with LoRA ({dd} and {dr}\npoints)", ABLATION,
           {"dd": quality_diff("digits", "hydra", "lora"), "dr": quality_diff("relations", "hydra", "lora")}),
    *_ablation_rows(),
    *_event_rows(),
]

DEEP = "quality_quick.json"
DEEP_ABLATION = "quality_quick_ablation.json"
DEEP_BLOCKS = "quality_quick_blocks.json"
DEEP_MOVES = "quality_quick_block_moves.json"
DEEP_NULL = "quality_quick_null_events.json"
DEEP_EQUAL_LR = "quality_quick_equal_lr.json"
DEEP_TASKS = ("digits", "relations", "codes")
#: (label, method, results JSON): the deeper benchmark's --quick run, and variants run afterwards on its cache
DEEP_ROWS = (("LoRA (fixed rank 8)", "lora", DEEP), ("HyDRA (`--schedule hydra`)", "hydra", DEEP),
             ("hierarchical only", "hierarchical", DEEP),
             ("`--allocation rank`", "hydra_rank", DEEP_ABLATION),
             ("`--resize-moments axis`", "hydra_moments", DEEP_ABLATION),
             ("hierarchical only, `--block-temperature 0`", "hierarchical_blocks", DEEP_BLOCKS),
             ("`--block-temperature 0`", "hydra_blocks", DEEP_BLOCKS),
             ("`--block-temperature 0 --move-scope block`", "hydra_block_moves", DEEP_MOVES))


def _mean_diff_se(a: str, b: str) -> Callable[[dict], str]:
    """Standard error of the mean-over-tasks difference a - b (report.compare_mean)."""
    from benchmarks.quality.report import compare_mean

    return lambda d: f"{compare_mean(d['summary'], d['settings']['tasks'], a, b)[1]:.1f}"


#: a table's per-task cells "mean ± std", with their values from :func:`_deep_task_values`
DEEP_CELLS = " | ".join(f"{{{t[0]}}} ± {{{t[0]}s}}" for t in DEEP_TASKS)


def _vs_lora(method: str) -> tuple[str, dict[str, Value]]:
    """A table's "difference from LoRA on the mean over tasks ± SE" cell and its values; LoRA's own row shows a dash."""
    if method == "lora":
        return "—", {}
    return "{diff} ± {se}", {"diff": _mean_diff_over_tasks(method, "lora"), "se": _mean_diff_se(method, "lora")}


def _deep_task_values(method: str) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for t in DEEP_TASKS:
        values[t[0]] = quality_mean(t, method)
        values[f"{t[0]}s"] = quality_mean(t, method, "accuracy_std")
    return values


SEARCH2 = "quality_quick_search2.json"
#: (label, method): LoRA and HyDRA with the search averaged over two validation seeds, the new observation and its
#: ablation, and HyDRA at LoRA's chosen rate
SEARCH2_ROWS = (("LoRA (fixed rank 8)", "lora"), ("HyDRA (`--loss-trend log`, the default)", "hydra"),
                ("HyDRA, `--loss-trend linear`", "hydra_linear_trend"),
                ("HyDRA at LoRA's learning rate", "hydra_lora_lr"))


def _seed0_choice(d: dict, method: str) -> float:
    """The learning rate a two-seed search would have chosen for ``method`` on its first seed alone."""
    found = [c for c in d["search"]["candidates"][method] if not c["knobs"]]
    return max(found, key=lambda c: statistics.fmean(v[0] for v in c["val_accuracy_by_seed"].values()))["lr"]


def _two_seed_candidate_rows(doc: str, source: str, labels: dict[str, str], knobs: bool = False) -> list[Figure]:
    """A two-seed search's candidates for each method in ``labels`` (method -> its label in the table): each
    seed's validation accuracy, mean over tasks, and their average; the learning-rate grid's, and with ``knobs``
    also the main knob's other values at the chosen rate (the knob and the rate as the JSON records them: the
    benchmark's knob of a method may have changed since)."""
    search = load(source)["search"]
    searched = search["knobs"] if knobs else {}
    out = []
    for method, label in labels.items():
        rows = [(f"| {label} | {lr:g} |", lambda c, lr=lr: not c["knobs"] and c["lr"] == lr, {})
                for lr in search["full_lr_grid" if method == "full" else "lr_grid"]]
        if method in searched:
            key, values = searched[method]["key"], searched[method]["values"]
            rows += [(f"| {label} | {{lr}}, {key} {v:g} |", lambda c, key=key, v=v: c["knobs"].get(key) == v,
                      {"lr": ("search/chosen/" + method + "/lr", "g")}) for v in values[1:]]
        for head, match, extra in rows:
            def seed_mean(d: dict, seed: int | None, match=match, method: str = method, head: str = head) -> str:
                found = [c for c in d["search"]["candidates"][method] if match(c)]
                assert len(found) == 1, f"{head}: the search grid changed: update the rows"
                by_seed = found[0]["val_accuracy_by_seed"].values()
                values = found[0]["val_accuracy"].values() if seed is None else (v[seed] for v in by_seed)
                return f"{100 * statistics.fmean(values):.1f}"
            out.append(Figure(doc, head + " {s0} | {s1} | {both} |",
                              source, {"s0": lambda d, f=seed_mean: f(d, 0), "s1": lambda d, f=seed_mean: f(d, 1),
                                       "both": lambda d, f=seed_mean: f(d, None), **extra}))
    return out


SEARCH2_XEON = "quality_quick_search2_xeon.json"
BASES = "quality_bases.json"
#: the bases bases.py set side by side: (results JSON, the base as hydra.md names it: pretraining seed, CPU)
BASE_ROWS = ((SEARCH2, 0, "AMD EPYC"), (SEARCH2_XEON, 0, "Intel(R) Xeon(R) Processor"))


def _bases_rows() -> list[Figure]:
    """The comparison of LoRA and HyDRA on each pretrained base (benchmarks/quality/bases.py)."""
    out = []
    for name, seed, cpu in BASE_ROWS:
        def row(d: dict, name: str = name, seed: int = seed, cpu: str = cpu) -> dict:
            r = d["bases"][name]
            assert (r["base"]["seed"], r["base"]["cpu"]) == (seed, cpu), f"{name}: the base changed: update BASE_ROWS"
            return r

        def temperature(d: dict, row=row) -> str:
            return f"{row(d)['validation']['hydra']['knobs'].get('temperature', 0.5):g}"

        values: dict[str, Value] = {
            "corpus": lambda d, row=row: f"{100 * row(d)['base']['corpus_val_accuracy']:.1f}",
            "llr": lambda d, row=row: f"{row(d)['validation']['lora']['lr']:g}",
            "lval": lambda d, row=row: f"{100 * row(d)['validation']['lora']['val_accuracy_mean']:.1f}",
            "hlr": lambda d, row=row: f"{row(d)['validation']['hydra']['lr']:g}",
            "ht": temperature,
            "hval": lambda d, row=row: f"{100 * row(d)['validation']['hydra']['val_accuracy_mean']:.1f}",
            "pref": lambda d, row=row: {"hydra": "HyDRA", "lora": "LoRA"}[row(d)["validation_prefers"]],
            "mean": lambda d, row=row: fmt(row(d)["test_mean"]["diff"], "pm.1f"),
            "se": lambda d, row=row: f"{row(d)['test_mean']['se']:.1f}",
            "target": lambda d, row=row: "yes" if row(d)["target_met"] else "no",
            **{t: (lambda d, row=row, t=t: fmt(row(d)["test"][t]["diff"], "pm.1f")) for t in DEEP_TASKS},
        }
        label = f"seed {seed}, {cpu.replace('(R)', '')}"
        out.append(Figure("docs/hydra.md", f"| {label} | {{corpus}}% | {{llr}} ({{lval}}) | {{hlr}}, {{ht}} ({{hval}}) | "
                          "{pref} | " + " | ".join(f"{{{t}}}" for t in DEEP_TASKS) + " | {mean} ± {se} | {target} |",
                          BASES, values))
    return out + _two_seed_candidate_rows("docs/hydra.md", SEARCH2_XEON, {"lora": "LoRA on the tables' base", "hydra": "HyDRA on the tables' base"}) + [
        Figure("docs/hydra.md", "pretraining under the same settings reached {corpus}% corpus\nvalidation accuracy",
               SEARCH2_XEON, {"corpus": ("pretrain/stage2_val/accuracy", "%.1f")}),
        Figure("docs/hydra.md", "HyDRA − LoRA is {v} ± {vse} points on validation and {t} ± {tse} on test:", BASES,
               {"v": ("validation_diff_mean_over_bases", "pm.1f"), "vse": ("validation_diff_se_over_bases", ".1f"),
                "t": ("test_mean_diff_mean_over_bases", "pm.1f"), "tse": ("test_mean_diff_se_over_bases", ".1f")}),
        Figure("docs/hydra.md", "Seed 1 agrees\n  with seed 0 on LoRA's rate ({lr}); it moves HyDRA from {h1} to {h2}, where the "
               "temperature\n  search then takes {t}.", SEARCH2_XEON,
               {"lr": ("search/chosen/lora/lr", "g"), "h1": lambda d: f"{_seed0_choice(d, 'hydra'):g}",
                "h2": ("search/chosen/hydra/lr", "g"), "t": ("search/chosen/hydra/knobs/temperature", "g")}),
        Figure("README.md", "pooled over the two bases, HyDRA − LoRA is {t} ± {tse} test points", BASES,
               {"t": ("test_mean_diff_mean_over_bases", "pm.1f"), "tse": ("test_mean_diff_se_over_bases", ".1f")}),
        Figure("docs/hydra.md", "the one-seed table above had {d} ± {se})", DEEP,
               {"d": _mean_diff_over_tasks("hydra", "lora"), "se": _mean_diff_se("hydra", "lora")}),
        Figure("README.md", "put\nHyDRA at {d} ± {se} points", DEEP,
               {"d": _mean_diff_over_tasks("hydra", "lora"), "se": _mean_diff_se("hydra", "lora")}),
        *_deep_event_rows((("HyDRA on the tables' base", "hydra", SEARCH2_XEON),)),
        Figure("docs/hydra.md", "({minutes} min; it trained {trained} runs;", SEARCH2_XEON,
               {"minutes": ("wall_seconds", "min.0f"), "trained": ("runs_trained", "d")}),
    ]


def _search2_rows() -> list[Figure]:
    """The two-seed search's test table, its candidates (each seed alone and the average) and its events."""
    out = []
    for label, method in SEARCH2_ROWS:
        values = {"lr": (f"search/chosen/{method}/lr", "g"), "val": _val_mean(method), **_deep_task_values(method)}
        diff, diff_values = _vs_lora(method)
        values.update(diff_values)
        out.append(Figure("docs/hydra.md", f"| {label} | {{lr}} | {DEEP_CELLS} | {diff} | {{val}} |", SEARCH2, values))
    out += _two_seed_candidate_rows("docs/hydra.md", SEARCH2, {"lora": "LoRA", "hydra": "HyDRA"})

    temp = ("search/chosen/hydra/knobs/temperature", "g")
    out += [
        Figure("README.md", "HyDRA {h2}% against LoRA's {l2}% ({d2} ± {se2} points, ahead on every task), and\n{eq2} ± {eqse2} "
               "at LoRA's own learning rate", SEARCH2,
               {"h2": _mean_over_tasks("hydra"), "l2": _mean_over_tasks("lora"), "d2": _mean_diff_over_tasks("hydra", "lora"),
                "se2": _mean_diff_se("hydra", "lora"), "eq2": _mean_diff_over_tasks("hydra_lora_lr", "lora"),
                "eqse2": _mean_diff_se("hydra_lora_lr", "lora")}),
        Figure("docs/hydra.md", "({minutes} min; it trained {trained} runs and read {cached} back from the\ncache;", SEARCH2,
               {"minutes": ("wall_seconds", "min.0f"), "trained": ("runs_trained", "d"), "cached": ("runs_cached", "d")}),
        Figure("docs/hydra.md", "and LoRA's\n{a} against HyDRA's {b} made the whole gap.", DEEP,
               {"a": ("search/chosen/lora/lr", "g"), "b": ("search/chosen/hydra/lr", "g")}),
        Figure("docs/hydra.md", "searched at its best rate, and {temp} won.", SEARCH2, {"temp": temp}),
        Figure("docs/hydra.md", "Averaged over two seeds, LoRA takes {lora} and HyDRA {hydra} (temperature\n  {temp}).",
               SEARCH2, {"lora": ("search/chosen/lora/lr", "g"), "hydra": ("search/chosen/hydra/lr", "g"), "temp": temp}),
        Figure("docs/hydra.md", "it reached\n  {base2}% corpus validation accuracy here", SEARCH2,
               {"base2": ("pretrain/stage2_val/accuracy", "%.1f")}),
        Figure("docs/hydra.md", "against {base1}% for the base of the tables above", DEEP,
               {"base1": ("pretrain/stage2_val/accuracy", "%.1f")}),
        Figure("docs/hydra.md", "base LoRA at 0.002 scores {lora2}% on the mean over tasks", SEARCH2,
               {"lora2": _mean_over_tasks("lora")}),
        Figure("docs/hydra.md", "on the other it scored {lora1}% at the same\n  rate", DEEP_EQUAL_LR,
               {"lora1": _mean_over_tasks("lora_hydra_lr")}),
        Figure("docs/hydra.md", "({d1} points there,", DEEP, {"d1": _mean_diff_over_tasks("hydra", "lora")}),
        Figure("docs/hydra.md", "points there, {d2} here)", SEARCH2, {"d2": _mean_diff_over_tasks("hydra", "lora")}),
    ]
    return out + _deep_event_rows(tuple((label, m, SEARCH2) for label, m in SEARCH2_ROWS[1:]))


def _deep_rows() -> list[Figure]:
    out = []
    for label, method, source in (*DEEP_ROWS, ("LoRA at HyDRA's learning rate", "lora_hydra_lr", DEEP_EQUAL_LR)):
        values = {"val": _val_mean(method), **_deep_task_values(method)}
        diff, diff_values = _vs_lora(method)
        values.update(diff_values)
        out.append(Figure("docs/hydra.md", f"| {label} | {DEEP_CELLS} | {diff} | {{val}} |", source, values))
    return out


def _deep_event_rows(rows: tuple[tuple[str, str, str], ...] = DEEP_ROWS[1:]) -> list[Figure]:
    out = []
    for label, method, source in rows:
        for task in DEEP_TASKS:
            key = f"events/{method}/{task}"
            values: dict[str, Value] = {"moves": (f"{key}/moves_per_run", ".1f"),
                                        "att": (f"{key}/attention_rank_mean", ".1f"),
                                        "mlp": (f"{key}/mlp_rank_mean", ".1f"),
                                        "late": (f"{key}/late_half_rank_mean", ".1f")}
            if method.startswith("hierarchical"):
                text = f"| {label}, {task} | {{moves}} | — | — | — | {{att}} / {{mlp}} | {{late}} |"
            else:
                text = (f"| {label}, {task} | {{moves}} | {{pred}} | {{first}} | {{later}} ± {{se}} | {{att}} / {{mlp}} "
                        "| {late} |")
                values.update({"pred": (f"{key}/predicted_mean", "pm.3f"), "first": (f"{key}/first_observed_mean", "pm.3f"),
                               "later": (f"{key}/later_observed_mean", "pm.3f"), "se": (f"{key}/later_observed_se", ".3f")})
            out.append(Figure("docs/hydra.md", text, source.replace(".json", "_events.json"), values))
    return out


def _mean_over_tasks(method: str) -> Callable[[dict], str]:
    return lambda d: f"{100 * statistics.fmean(d['summary'][t][method]['accuracy_mean'] for t in d['settings']['tasks']):.1f}"


WHOLE = "quality.json"
ADARING_WIDE = "quality_adaring_wide_lr.json"
METHODS_SEARCH2 = "quality_quick_search2_xeon_methods.json"
#: the README's whole table (docs/results.md), every method on the deeper benchmark
WHOLE_ROWS = (("Full fine-tuning", "full"), ("LoRA (fixed rank 8; the default)", "lora"),
              ("HyDRA (`--schedule hydra`)", "hydra"), ("hierarchical only", "hierarchical"),
              ("dynamic only", "dynamic"), ("Hydra multi-head", "multihead"), ("DMLoRA", "dmlora"),
              ("AdaRing", "adaring"))


def _train_hours(d: dict) -> str:
    """Core-hours of training over every distinct run a results JSON used, cached or not."""
    return f"{d['runs_train_seconds'] / 3600:.1f}"


def _scratch_hours(d: dict) -> str:
    """Those hours spread over the run's workers: the table's cost from scratch, scoring and pretraining aside."""
    return f"{d['runs_train_seconds'] / 3600 / d['environment']['workers']:.1f}"


def _whole_readme_rows() -> list[Figure]:
    out = []
    for label, method in WHOLE_ROWS:
        values: dict[str, Value] = {"m": _mean_over_tasks(method), **_deep_task_values(method)}
        if method == "full":
            params, values["params"] = "all {params}", lambda d: f"{d['summary']['digits']['full']['trainable_parameters']:,}"
        else:
            params, values["params"] = "{params}", (f"budget/methods/{method}/adapter_parameters", ",")
        diff, diff_values = _vs_lora(method)
        values.update(diff_values)
        out.append(Figure("README.md", f"| {label} | {params} | {DEEP_CELLS} | {{m}} | {diff} |", WHOLE, values))
    return out


def _whole_hydra_rows() -> list[Figure]:
    """docs/hydra.md's view of the whole table: LoRA and the HyDRA schedules on test, and HyDRA's moves."""
    out = [Figure("docs/hydra.md", "Both LoRA and HyDRA chose s = {s}, at which both moved down to the rate {lr} (HyDRA with\n"
                  "temperature {t}); validation then has LoRA at {lv}% and HyDRA at {hv}%.", WHOLE,
                  {"s": _chosen_scale("lora"), "lr": ("search/chosen/hydra/lr", "g"),
                   "t": ("search/chosen/hydra/knobs/temperature", "g"), "lv": _chosen_val_accuracy("lora"),
                   "hv": _chosen_val_accuracy("hydra")}),
           Figure("docs/hydra.md", "runs) has it at {h}% against LoRA's {l}%: no preference", WHOLE,
                  {"h": _val_mean("hierarchical"), "l": _val_mean("lora")})]
    for label, method in (("LoRA, scale searched", "lora"), ("HyDRA, scale searched", "hydra"),
                          ("hierarchical only, scale searched", "hierarchical"),
                          ("dynamic only, scale searched", "dynamic")):
        values: dict[str, Value] = _deep_task_values(method)
        diff, diff_values = _vs_lora(method)
        values.update(diff_values)
        out.append(Figure("docs/hydra.md", f"| {label} | {DEEP_CELLS} | {diff} |", WHOLE, values))
    return out + _deep_event_rows((("HyDRA, whole table", "hydra", WHOLE), ("dynamic only, whole table", "dynamic", WHOLE)))


QUALITY_WHOLE = [
    Figure("README.md", "The table's {runs} distinct runs trained for {hours}\ncore-hours: about {scratch} h on 2 CPU cores from "
           "scratch", WHOLE, {"runs": ("runs_distinct", "d"), "hours": _train_hours,
                              "scratch": _scratch_hours}),
    Figure("README.md", "tasks: HyDRA {h} ± {hs}, multi-head {mh} ± {mhs} and DMLoRA {dm} ± {dms} points, each within\nnoise. "
           "AdaRing is at {ar} ± {ars} points", WHOLE,
           {"h": _mean_diff_over_tasks("hydra", "lora"), "hs": _mean_diff_se("hydra", "lora"),
            "mh": _mean_diff_over_tasks("multihead", "lora"), "mhs": _mean_diff_se("multihead", "lora"),
            "dm": _mean_diff_over_tasks("dmlora", "lora"), "dms": _mean_diff_se("dmlora", "lora"),
            "ar": _mean_diff_over_tasks("adaring", "lora"), "ars": _mean_diff_se("adaring", "lora")}),
    Figure("README.md", "multi-head, DMLoRA and AdaRing\nwere at {mh}, {dm}", METHODS_SEARCH2,
           {"mh": _mean_diff_over_tasks("multihead", "lora"), "dm": _mean_diff_over_tasks("dmlora", "lora")}),
    Figure("README.md", "and {ar} points, and the adapter scale", ADARING_WIDE,
           {"ar": _mean_diff_over_tasks("adaring", "lora")}),
    Figure("README.md", "multi-head {a}% against {b}%, DMLoRA {c}% against {d}%, AdaRing {e}% against {f}%, LoRA {g}%\n"
           "against {h}%", WHOLE,
           {"a": _best_val_at_default_scale("multihead"), "b": _chosen_val_accuracy("multihead"),
            "c": _best_val_at_default_scale("dmlora"), "d": _chosen_val_accuracy("dmlora"),
            "e": _best_val_at_default_scale("adaring"), "f": _chosen_val_accuracy("adaring"),
            "g": _best_val_at_default_scale("lora"), "h": _chosen_val_accuracy("lora")}),
    Figure("README.md", "Validation prefers LoRA here ({l}% against HyDRA's {h}% on the\nsearch's seeds)", WHOLE,
           {"l": _chosen_val_accuracy("lora"), "h": _chosen_val_accuracy("hydra")}),
    *_whole_readme_rows(),
    *_whole_hydra_rows(),
    Figure("benchmarks/quality/README.md", "a run trains for {lo}–{hi} s on one core", WHOLE,
           {"lo": lambda d: f"{min(r['train_seconds'] for r in d['runs']):.0f}",
            "hi": lambda d: f"{max(r['train_seconds'] for r in d['runs']):.0f}"}),
    Figure("benchmarks/quality/README.md", "is\n{runs} distinct runs: their training took {hours} core-hours", WHOLE,
           {"runs": ("runs_distinct", "d"), "hours": _train_hours}),
    Figure("benchmarks/quality/README.md", "about {h} h on 2 cores\nfrom scratch", WHOLE,
           {"h": _scratch_hours}),
    Figure("docs/methods.md", "tasks ({mh} ± {mhs} and {dm} ± {dms} points, within noise) and AdaRing is at {ar} ± {ars} points\n"
           "(relations {arr} ± {arrs}, worse", WHOLE,
           {"mh": _mean_diff_over_tasks("multihead", "lora"), "mhs": _mean_diff_se("multihead", "lora"),
            "dm": _mean_diff_over_tasks("dmlora", "lora"), "dms": _mean_diff_se("dmlora", "lora"),
            "ar": _mean_diff_over_tasks("adaring", "lora"), "ars": _mean_diff_se("adaring", "lora"),
            "arr": quality_diff("relations", "adaring", "lora"),
            "arrs": quality_diff("relations", "adaring", "lora", se=True)}),
    Figure("docs/methods.md", "s = {mh} for multi-head, {dm} for DMLoRA and {ar} for AdaRing, against {lo} for LoRA (and\n"
           "HyDRA); all but AdaRing ({alr}) chose LoRA's rate, {lr}.", WHOLE,
           {"mh": _chosen_scale("multihead"), "dm": _chosen_scale("dmlora"), "ar": _chosen_scale("adaring"),
            "lo": _chosen_scale("lora"), "alr": ("search/chosen/adaring/lr", "g"), "lr": ("search/chosen/lora/lr", "g")}),
    Figure("docs/methods.md", "(multi-head on digits, lowest seed {mh}%;\nDMLoRA on relations, lowest seed {dm}%", WHOLE,
           {"mh": _lowest_seed("multihead", "digits"), "dm": _lowest_seed("dmlora", "relations")}),
    Figure("docs/methods.md", "at drop 0.1, s = {s} (from the default 2) lifts validation from {a}% to {b}%, level with LoRA's\n"
           "  {l}% at its own best scale", WHOLE,
           {"s": _chosen_scale("dmlora"), "a": _candidate_val("dmlora", knobs={"branch_drop_max": 0.1}),
            "b": _chosen_val_accuracy("dmlora"), "l": _chosen_val_accuracy("lora")}),
    Figure("docs/methods.md", "Multi-head chose s = {s}, which lifts its\n  validation from {a}% to {b}% (LoRA's best {l}%)",
           WHOLE, {"s": _chosen_scale("multihead"), "a": _candidate_val("multihead"), "b": _chosen_val_accuracy("multihead"),
                   "l": _chosen_val_accuracy("lora")}),
    Figure("docs/methods.md", "chose rate {lr} with s = {s} (validation {v}%, against {v0}% at the default\nscale), and on test "
           "AdaRing is at {d} ± {se} points from LoRA (digits {dd}, relations {dr}, codes\n{dc})", WHOLE,
           {"lr": ("search/chosen/adaring/lr", "g"), "s": _chosen_scale("adaring"), "v": _chosen_val_accuracy("adaring"),
            "v0": _candidate_val("adaring"), "d": _mean_diff_over_tasks("adaring", "lora"),
            "se": _mean_diff_se("adaring", "lora"),
            **{k: quality_diff(t, "adaring", "lora") for k, t in (("dd", "digits"), ("dr", "relations"), ("dc", "codes"))}}),
    Figure("docs/methods.md", "(training loss at the last step {ad} / {ar} / {ac} against\nLoRA's {ld} / {lr} / {lc})", WHOLE,
           {f"{m[0]}{t[0]}": _train_loss(method, t) for m, method in (("a", "adaring"), ("l", "lora"))
            for t in DEEP_TASKS}),
    Figure("docs/hydra.md", "HyDRA − LoRA at the same rate is\n  {eqd} ± {eqse} points on the mean over tasks and {eqdd} ± "
           "{eqdse} on digits", DEEP_EQUAL_LR,
           {"eqd": _mean_diff_over_tasks("hydra", "lora_hydra_lr"), "eqse": _mean_diff_se("hydra", "lora_hydra_lr"),
            "eqdd": quality_diff("digits", "hydra", "lora_hydra_lr"),
            "eqdse": quality_diff("digits", "hydra", "lora_hydra_lr", se=True)}),
    Figure("README.md", "Full fine-tuning leads everything ({ff} ± {ffse} points\nover LoRA)", WHOLE,
           {"ff": _mean_diff_over_tasks("full", "lora"), "ffse": _mean_diff_se("full", "lora")}),
    Figure("README.md", "(Chance {cd} / {cr} / {cc}.)", WHOLE,
           {"cd": ("chance/digits", "%.1f"), "cr": ("chance/relations", "%.1f"), "cc": ("chance/codes", "%.1f")}),
    Figure("README.md", "HyDRA scores {h}% on the mean over\ntasks against fixed LoRA's {l}% ({diff} ± {se} points), and "
           "hierarchical allocation alone\n{hi}%", WHOLE,
           {"h": _mean_over_tasks("hydra"), "l": _mean_over_tasks("lora"), "hi": _mean_over_tasks("hierarchical"),
            "diff": _mean_diff_over_tasks("hydra", "lora"), "se": _mean_diff_se("hydra", "lora")}),
]

QUALITY_DEEP = [
    Figure("README.md", "`make bench-quality-quick` ({minutes} min) trains", DEEP, {"minutes": ("wall_seconds", "min.0f")}),
    Figure("docs/hydra.md", "`make bench-quality-quick` ({minutes} min, [results-quick.md]", DEEP,
           {"minutes": ("wall_seconds", "min.0f")}),
    Figure("docs/hydra.md", "{abl_minutes} min for their 30 runs", DEEP_ABLATION, {"abl_minutes": ("wall_seconds", "min.0f")}),
    *_deep_rows(),
    *_deep_event_rows(),
    *_search2_rows(),
    *_bases_rows(),
    Figure("README.md", "`--block-temperature 0` (the closest: hierarchical with it, {d} points)", DEEP_BLOCKS,
           {"d": _mean_diff_over_tasks("hierarchical_blocks", "lora")}),
    Figure("docs/hydra.md", "{minutes} min for its 15 runs", DEEP_MOVES, {"minutes": ("wall_seconds", "min.0f")}),
    *[Figure("docs/hydra.md", f"| no move (fixed LoRA), {task} | " + " | ".join(
        f"{{{t}f}} | {{{t}l}} ± {{{t}se}} | {{{t}rms}}" for t in ("linear", "log", "quadratic")) + " | {s1} | {s2} |",
        DEEP_NULL, {**{k: v for t in ("linear", "log", "quadratic") for k, v in (
            (f"{t}f", (f"null/{task}/trends/{t}/first_observed_mean", "pm.3f")),
            (f"{t}l", (f"null/{task}/trends/{t}/later_observed_mean", "pm.3f")),
            (f"{t}se", (f"null/{task}/trends/{t}/later_observed_se", ".3f")),
            (f"{t}rms", (f"null/{task}/trends/{t}/rms", ".3f")))},
            "s1": (f"null/{task}/loss_slope_first", "pm.4f"), "s2": (f"null/{task}/loss_slope_later", "pm.4f")})
      for task in DEEP_TASKS],
    Figure("docs/hydra.md", "({runs} fixed-LoRA runs per task", DEEP_NULL, {"runs": ("null/digits/runs", "d")}),
    Figure("docs/hydra.md", "(at most {h1} at the first event step and {h2} at the\nlater ones)", DEEP_NULL,
           {"h1": lambda d: f"{max(-0.5 * d['null'][t]['loss_slope_first'] for t in DEEP_TASKS):.3f}",
            "h2": lambda d: f"{max(-0.5 * d['null'][t]['loss_slope_later'] for t in DEEP_TASKS):.4f}"}),
]

RANK1 = "quality_budget_rank1.json"
QUALITY_RANK1 = [
    Figure("docs/methods.md", "({lp} adapter parameters\nfor LoRA; AdaRing at ring ranks {ring} per module type, {ap})",
           RANK1, {"lp": ("budget/lora_parameters", ","), "ap": ("budget/adaring_parameters", ","),
                   "ring": lambda d: "/".join(sorted({str(r) for r in d["budget"]["adaring_ring_ranks"].values()}))}),
    Figure("docs/methods.md", "docs/results/quality_budget_rank1.json`, {minutes} min,\n{runs} runs). Both needed", RANK1,
           {"minutes": ("wall_seconds", "min.0f"), "runs": ("runs_distinct", "d")}),
    Figure("docs/methods.md", "LoRA chose rate {llr} with\ns = {ls} (validation {lv}%, against {l0}% at its default scale) and "
           "AdaRing rate {alr} with\ns = {as_} ({av}%, against {a0}%).", RANK1,
           {"llr": ("search/chosen/lora/lr", "g"), "ls": _chosen_scale("lora"), "lv": _chosen_val_accuracy("lora"),
            "l0": _best_val_at_default_scale("lora"), "alr": ("search/chosen/adaring/lr", "g"),
            "as_": _chosen_scale("adaring"), "av": _chosen_val_accuracy("adaring"),
            "a0": _best_val_at_default_scale("adaring")}),
    Figure("docs/methods.md", "On test AdaRing scores {am}% on the mean over tasks against LoRA\nrank 1's {lm}% ({d} ± {se} "
           "points): within noise on digits ({dd} ± {dds}) and on codes\n({dc} ± {dcs}), far behind on relations ({dr} ± {drs}, "
           "where it is {ar}% against chance\n{cr}%).", RANK1,
           {"am": _mean_over_tasks("adaring"), "lm": _mean_over_tasks("lora"),
            "d": _mean_diff_over_tasks("adaring", "lora"), "se": _mean_diff_se("adaring", "lora"),
            **{k: quality_diff(t, "adaring", "lora", se=k.endswith("s")) for k, t in
               (("dd", "digits"), ("dds", "digits"), ("dc", "codes"), ("dcs", "codes"), ("dr", "relations"),
                ("drs", "relations"))},
            "ar": quality_mean("relations", "adaring"), "cr": ("chance/relations", "%.1f")}),
    Figure("README.md", "at LoRA rank 1's budget, where the source\nclaims its advantage, it is at {d} ± {se} points.", RANK1,
           {"d": _mean_diff_over_tasks("adaring", "lora"), "se": _mean_diff_se("adaring", "lora")}),
    Figure("docs/methods.md", "it trails LoRA by more\nthan at the full budget ({full} points there)", WHOLE,
           {"full": _mean_diff_over_tasks("adaring", "lora")}),
]


def _scale_stage_vals(d: dict, method: str) -> list[float]:
    """Validation accuracies (%) of ``method``'s scale-stage candidates at its chosen rate, smallest scale first."""
    lr = d["search"]["chosen"][method]["lr"]
    found = [c for c in d["search"]["candidates"][method] if c["lr"] == lr and "alpha_factor" in c["knobs"]]
    return [100 * c["val_accuracy_mean"] for c in sorted(found, key=lambda c: c["knobs"]["alpha_factor"])]


def _vs_table_lora(task: str | None = None, se: bool = False) -> Callable[[dict], str]:
    """This JSON's LoRA minus the whole table's LoRA (rank 8) on test: one task's difference, or the mean over tasks,
    or with ``se`` its standard error (the two runs' seeds are independent draws of the same protocol)."""
    def value(d: dict) -> str:
        table = load(WHOLE)["summary"]
        merged = {"settings": d["settings"],
                  "summary": {t: {"other": d["summary"][t]["lora"], "lora": table[t]["lora"]} for t in d["settings"]["tasks"]}}
        if task is not None:
            return quality_diff(task, "other", "lora", se)(merged)
        return (_mean_diff_se if se else _mean_diff_over_tasks)("other", "lora")(merged)
    return value


LORA16 = "quality_lora_rank16.json"
QUALITY_LORA16 = [
    *[Figure("docs/hydra.md", f"| {label} | {{params}} | {{lr}}, {{s}} | {{v}} | {DEEP_CELLS} | {{m}} | {diff} |", source,
             {"params": ("budget/lora_parameters", ","), "lr": ("search/chosen/lora/lr", "g"), "s": _chosen_scale("lora"),
              "v": _chosen_val_accuracy("lora"), "m": _mean_over_tasks("lora"), **_deep_task_values("lora"), **values})
      for label, source, diff, values in (
          ("LoRA rank 8 (the table)", WHOLE, "—", {}),
          ("LoRA rank 16", LORA16, "{diff} ± {se}", {"diff": _vs_table_lora(), "se": _vs_table_lora(se=True)}))],
    Figure("docs/hydra.md", "docs/results/quality_lora_rank16.json`, {minutes} min for its {runs} runs)", LORA16,
           {"minutes": ("wall_seconds", "min.0f"), "runs": ("runs_distinct", "d")}),
    Figure("docs/hydra.md", "Twice the rank is ahead on every task (digits\n  {dd}, relations {dr}, codes {dc} points)", LORA16,
           {f"d{t[0]}": _vs_table_lora(t) for t in DEEP_TASKS}),
    Figure("docs/hydra.md", "(training loss at the last step\n  {ad} / {ar} / {ac} against {ld} / {lr} / {lc})", LORA16,
           {**{f"a{t[0]}": _train_loss("lora", t) for t in DEEP_TASKS},
            **{f"l{t[0]}": lambda d, t=t: _train_loss("lora", t)(load(WHOLE)) for t in DEEP_TASKS}}),
    Figure("docs/hydra.md", "and doubling the budget buys {d};", LORA16, {"d": _vs_table_lora()}),
    Figure("README.md", "LoRA at twice the rank is {d} ± {se} points ahead", LORA16,
           {"d": _vs_table_lora(), "se": _vs_table_lora(se=True)}),
    Figure("docs/hydra.md", "HyDRA is at {h} and hierarchical allocation at {hi} (above)", WHOLE,
           {"h": _mean_diff_over_tasks("hydra", "lora"), "hi": _mean_diff_over_tasks("hierarchical", "lora")}),
]


RANK1_WIDE = "quality_budget_rank1_wide_lr.json"
QUALITY_RANK1_WIDE = [
    Figure("docs/methods.md", "docs/results/quality_budget_rank1_wide_lr.json`; it trained {trained} runs beside the cache of "
           "the run\nabove, {minutes} min). At AdaRing's default scale the higher rates win on validation ({a16}% at 0.016,\n"
           "{a32}% at 0.032, against {a8}% at 0.008), so the search took the scale stage at {alr}, where every\nlarger "
           "scale lost ({s1}% at s = 1, down to {smin}%), and chose rate {alr2} at the default scale. That\nchoice is below "
           "the narrower grid's on validation ({av}% against {av0}%) and on test: AdaRing\nscores {am}% on the mean over "
           "tasks against LoRA rank 1's {lm}% ({d} ± {se} points; LoRA's choice,\nrate {llr} with s = {ls}, is unchanged",
           RANK1_WIDE,
           {"trained": ("runs_trained", "d"), "minutes": ("wall_seconds", "min.0f"),
            "a16": _candidate_val("adaring", 0.016), "a32": _candidate_val("adaring", 0.032),
            "a8": _candidate_val("adaring", 0.008), "alr": ("search/chosen/adaring/lr", "g"),
            "alr2": ("search/chosen/adaring/lr", "g"),
            "s1": lambda d: f"{_scale_stage_vals(d, 'adaring')[0]:.1f}",
            "smin": lambda d: f"{min(_scale_stage_vals(d, 'adaring')):.1f}",
            "av": _chosen_val_accuracy("adaring"), "av0": lambda d: _chosen_val_accuracy("adaring")(load(RANK1)),
            "am": _mean_over_tasks("adaring"), "lm": _mean_over_tasks("lora"),
            "d": _mean_diff_over_tasks("adaring", "lora"), "se": _mean_diff_se("adaring", "lora"),
            "llr": ("search/chosen/lora/lr", "g"), "ls": _chosen_scale("lora")}),
]



QUALITY_ADARING_WIDE = [
    Figure("docs/methods.md", "docs/results/quality_adaring_wide_lr.json`, {minutes} min with\nother jobs sharing the "
           "machine for part of it) chose {alr} for AdaRing "
           "again (validation {aval}% on the mean over tasks; {a16}% at 0.016, {a32}% at 0.032) and {llr} for LoRA.",
           ADARING_WIDE,
           {"minutes": ("wall_seconds", "min.0f"), "alr": ("search/chosen/adaring/lr", "g"),
            "aval": _candidate_val("adaring"), "a16": _candidate_val("adaring", 0.016),
            "a32": _candidate_val("adaring", 0.032), "llr": ("search/chosen/lora/lr", "g")}),
    Figure("docs/methods.md", "On test AdaRing then scores {am}% on the mean over tasks against LoRA's {lm}% ({d} ± {se} "
           "points; digits {dd}, relations {dr}, codes {dc})", ADARING_WIDE,
           {"am": _mean_over_tasks("adaring"), "lm": _mean_over_tasks("lora"),
            "d": _mean_diff_over_tasks("adaring", "lora"), "se": _mean_diff_se("adaring", "lora"),
            **{k: quality_diff(t, "adaring", "lora") for k, t in (("dd", "digits"), ("dr", "relations"), ("dc", "codes"))}}),
    Figure("docs/methods.md", "its training loss at the last step is {ad} / {ar} / {ac} (digits / relations / codes,\n"
           "mean over the 5 test seeds) against LoRA's {ld} / {lr} / {lc}, so", ADARING_WIDE,
           {f"{m[0]}{t[0]}": _train_loss(method, t) for m, method in (("a", "adaring"), ("l", "lora"))
            for t in DEEP_TASKS}),
]

def _chosen_knob(method: str) -> Callable[[dict], str]:
    """A method's searched knob as one token for a table cell: ``default`` or ``branch_drop_max=0.1``."""
    def value(d: dict) -> str:
        knobs = d["search"]["chosen"][method]["knobs"]
        return ",".join(f"{k}={v:g}" for k, v in knobs.items()) or "default"
    return value


ADARING_ALPHA = "quality_adaring_alpha.json"
QUALITY_ADARING_ALPHA = [
    Figure("docs/methods.md", "docs/results/quality_adaring_alpha.json`; its last pass took {minutes} min, training "
           "{trained} runs and reading {cached}\nback from the cache of the wider grid and of a first pass over the smaller "
           "knob grid) scores\nAdaRing on validation at {v1}% with s = 1, {v2}% with s = 2, {v4}% with s = 4 and {v8}% with "
           "s = 8, against\n{v0}% at the default s = 0.25 (mean over tasks, at its rate {lr});", ADARING_ALPHA,
           {"minutes": ("wall_seconds", "min.0f"), "trained": ("runs_trained", "d"), "cached": ("runs_cached", "d"),
            **{f"v{s}": _candidate_val("adaring", knobs={"alpha_factor": 4.0 * s}) for s in (1, 2, 4, 8)},
            "v0": _candidate_val("adaring"), "lr": ("search/chosen/adaring/lr", "g")}),
    Figure("docs/methods.md", "on test AdaRing with its choice ({knob}) scores {am}% on the mean over tasks against "
           "LoRA's {lm}% ({d} ± {se} points; digits {dd}, relations {dr}, codes {dc})", ADARING_ALPHA,
           {"knob": _chosen_knob("adaring"), "am": _mean_over_tasks("adaring"), "lm": _mean_over_tasks("lora"),
            "d": _mean_diff_over_tasks("adaring", "lora"), "se": _mean_diff_se("adaring", "lora"),
            **{k: quality_diff(t, "adaring", "lora") for k, t in (("dd", "digits"), ("dr", "relations"), ("dc", "codes"))}}),
    Figure("docs/methods.md", "AdaRing fits better (training loss at the last step {d} / {r} / {c})", ADARING_ALPHA,
           {t[0]: _train_loss("adaring", t) for t in DEEP_TASKS}),
]

#: (method, label): multi-head and DMLoRA with the search averaged over two validation seeds, LoRA from the same cache
METHODS_SEARCH2_ROWS = {"lora": "LoRA (fixed rank 8)", "multihead": "Hydra multi-head", "dmlora": "DMLoRA"}


def _methods_search2_rows() -> list[Figure]:
    out = _two_seed_candidate_rows("docs/methods.md", METHODS_SEARCH2, METHODS_SEARCH2_ROWS, knobs=True)
    for method, label in METHODS_SEARCH2_ROWS.items():
        diff = ({"diff": _mean_diff_over_tasks(method, "lora"), "dse": _mean_diff_se(method, "lora")}
                if method != "lora" else {})
        out.append(Figure("docs/methods.md", f"| {label} | {{lr}} | {{knob}} | {DEEP_CELLS} | {{mean}} | "
                          + ("{diff} ± {dse} |" if diff else "– |"), METHODS_SEARCH2,
                          {"lr": (f"search/chosen/{method}/lr", "g"), "knob": _chosen_knob(method), "mean": _mean_over_tasks(method), **_deep_task_values(method),
                           **diff}))
    def chosen_val(method: str) -> Callable[[dict], str]:
        return lambda d: _candidate_val(method, knobs=d["search"]["chosen"][method]["knobs"])(d)

    return out + [
        Figure("docs/methods.md", "its\n  gaps stood: multi-head {mh} ± {mhs} and DMLoRA {dm} ± {dms} points on the mean over "
               "tasks,", METHODS_SEARCH2,
               {"mh": _mean_diff_over_tasks("multihead", "lora"), "mhs": _mean_diff_se("multihead", "lora"),
                "dm": _mean_diff_over_tasks("dmlora", "lora"), "dms": _mean_diff_se("dmlora", "lora")}),
        Figure("docs/methods.md", "the chosen candidates score {l}% (LoRA), {mh}% (multi-head) and\n  {dm}% (DMLoRA).",
               METHODS_SEARCH2, {"l": chosen_val("lora"), "mh": chosen_val("multihead"), "dm": chosen_val("dmlora")}),
        Figure("docs/methods.md", "--results docs/results/quality_quick_search2_xeon_methods.json`, {minutes} min; it "
               "trained {trained} runs", METHODS_SEARCH2,
               {"minutes": ("wall_seconds", "min.0f"), "trained": ("runs_trained", "d")}),
    ]


QUALITY_METHODS_SEARCH2 = _methods_search2_rows()

DEMO = [
    Figure("README.md", " val loss {before} -> {after}\n", "demo.json",
           {"before": ("runs/lora:fixed/eval_before/loss", ".3f"), "after": ("runs/lora:fixed/eval_after/loss", ".3f")}),
    Figure("README.md", "val accuracy {before}% -> {after}% (chance {chance}%, {n} samples)", "demo.json",
           {"before": ("runs/lora:fixed/eval_before/accuracy", "%.1f"),
            "after": ("runs/lora:fixed/eval_after/accuracy", "%.1f"),
            "chance": ("runs/lora:fixed/printed/chance_pct", ".1f"), "n": ("runs/lora:fixed/printed/val_samples", ".0f")}),
    Figure("README.md", "(max |logit difference| vs adapter model {gap})", "demo.json",
           {"gap": ("runs/lora:fixed/printed/merged_max_logit_diff", ".1e")}),
    Figure("README.md", "done in {s} s\n```", "demo.json", {"s": ("runs/lora:fixed/printed/done_s", ".0f")}),
    *[Figure("docs/evaluation.md", f"\n{t} {{n}} {{em}}% {{vqa}}%\n", "demo.json",
             {"n": (f"eval/scores/{k}/n", "d"), "em": (f"eval/scores/{k}/exact_match", "%.2f"),
              "vqa": (f"eval/scores/{k}/vqa_accuracy", "%.2f")})
      for t, k in (("color", "by_type/color"), ("count", "by_type/count"), ("position", "by_type/position"),
                   ("shape", "by_type/shape"), ("overall", "overall"))],
    Figure("docs/evaluation.md", "The overall figure is the demo's own validation accuracy ({acc}%)", "demo.json",
           {"acc": ("runs/lora:fixed/eval_after/accuracy", "%.1f")}),
    Figure("docs/on-device-training.md", "PyTorch loss {pt}, ORT eval loss {ort} (rel. diff {d})", "demo.json",
           {"pt": ("ort_export/pytorch_loss", ".6f"), "ort": ("ort_export/ort_eval_loss", ".6f"),
            "d": ("ort_export/rel_diff", ".1e")}),
    Figure("docs/on-device-training.md", "| tiny model (4 layers) |\n|---|---|---|\n"
           "| `manifest.json` | everything the app needs to know (JSON Schema: `mobilepeft/export/bundle.schema.json`, "
           "version 1) | {manifest} KB |\n"
           "| `training_model.onnx` | forward + backward graph (ORT contrib ops: runs only in a training build) | {train} KB |\n"
           "| `eval_model.onnx` | forward + loss; must stay `.onnx` for `exportModelForInference` | {eval} KB |\n"
           "| `optimizer_model.onnx` | AdamW (or SGD) with gradient-norm clipping | {opt} KB |\n"
           "| `checkpoint` | all decoder weights, frozen and trainable (flatbuffer) | {ckpt} MB |\n"
           "| `nominal_checkpoint` | names and shapes only, for apps that ship weights separately | {nominal} KB |\n"
           "| `vision_encoder.onnx` | frozen CLIP tower + projector, inference | {vision} KB |\n"
           "| `tokenizer.model` (+ configs) | the model's tokenizer | {tok} KB |\n"
           "| `selftest.npz` | one real batch + its PyTorch loss | {selftest} KB |\n"
           "| `adapter/` | the LoRA the artifacts start from (PEFT format); `from-ort` writes this layout back | {adapter} MB |",
           "demo.json",
           {"manifest": ("ort_export/file_bytes/manifest.json", "KB.0f"),
            "train": ("ort_export/file_bytes/training_model.onnx", "KB.0f"),
            "eval": ("ort_export/file_bytes/eval_model.onnx", "KB.0f"),
            "opt": ("ort_export/file_bytes/optimizer_model.onnx", "KB.1f"),
            "ckpt": ("ort_export/file_bytes/checkpoint", "MB.1f"),
            "nominal": ("ort_export/file_bytes/nominal_checkpoint", "KB.0f"),
            "vision": ("ort_export/file_bytes/vision_encoder.onnx", "KB.0f"),
            "tok": ("ort_export/file_bytes/tokenizer.model", "KB.0f"),
            "selftest": ("ort_export/file_bytes/selftest.npz", "KB.0f"),
            "adapter": lambda d: fmt(sum(v for k, v in d["ort_export"]["file_bytes"].items() if k.startswith("adapter/")),
                                     "MB.1f")}),
    Figure("docs/on-device-training.md", "(relative 1e-4; measured {d})", "demo.json",
           {"d": lambda d: "~" + f"{d['ort_export']['rel_diff']:.0e}".replace("e-0", "e-")}),
]

def _minmax(keys: Callable[[dict], list[float]], spec: str) -> Callable[[dict], str]:
    """``lo–hi`` of some values (one value if both ends print the same)."""
    def value(d: dict) -> str:
        xs = keys(d)
        lo, hi = fmt(min(xs), spec), fmt(max(xs), spec)
        return lo if lo == hi else f"{lo}–{hi}"
    return value


def _row(d: dict, shape: str, layers: int) -> dict:
    return next(r for r in d["rows"] if r["shape"] == shape and r["layers"] == layers)


def _frozen_full(d: dict) -> float:
    """Frozen fp32 bytes of the full 24-layer decoder, from the 1- and 2-layer bundles (linear in layers)."""
    lo, hi = _row(d, "mobilellama-1.4b", 1), _row(d, "mobilellama-1.4b", 2)
    per_layer = hi["sizes"]["frozen_bytes"] - lo["sizes"]["frozen_bytes"]
    return lo["sizes"]["frozen_bytes"] + per_layer * (d["extrapolation"]["full_layers"] - 1)


_DM = "demo_methods.json"
_FIXED = ("lora:fixed", "multihead:fixed", "dmlora:fixed", "adaring:fixed")


def _about(d: dict) -> str:
    """The four fixed-schedule accuracies' mean, to the nearest 5 points."""
    return f"{5 * round(statistics.fmean(100 * d['runs'][c]['eval_after']['accuracy'] for c in _FIXED) / 5):.0f}"


DEMO_METHODS = [
    Figure("README.md", "On the demo task with `--schedule fixed` all four reach about {about}% accuracy from {before}% "
           "in 300 steps.", _DM,
           {"about": _about, "before": _minmax(lambda d: [100 * d["runs"][c]["eval_before"]["accuracy"] for c in _FIXED],
                                               ".0f")}),
    Figure("docs/methods.md", "all four reach about {about}% exact-match accuracy from {before}% (chance {chance}%): "
           "lora {lora}%, multihead {mh}%, dmlora {dm}%, adaring {ar}% (with {share}x LoRA's parameters).", _DM,
           {"about": _about,
            "before": _minmax(lambda d: [100 * d["runs"][c]["eval_before"]["accuracy"] for c in _FIXED], ".0f"),
            "chance": ("runs/lora:fixed/printed/chance_pct", ".0f"),
            "lora": ("runs/lora:fixed/eval_after/accuracy", "%.1f"), "mh": ("runs/multihead:fixed/eval_after/accuracy", "%.1f"),
            "dm": ("runs/dmlora:fixed/eval_after/accuracy", "%.1f"), "ar": ("runs/adaring:fixed/eval_after/accuracy", "%.1f"),
            "share": ratio("runs/adaring:fixed/adapter_parameters", "runs/lora:fixed/adapter_parameters", ".2f")}),
    Figure("docs/hydra.md", "budget for all ({n} parameters for fixed;", _DM,
           {"n": ("runs/lora:fixed/adapter_parameters", ",")}),
    *[Figure("docs/hydra.md", f"| {label} | {{loss}} | {{acc}}% |", _DM,
             {"loss": (f"runs/lora:{sched}/eval_after/loss", ".3f"),
              "acc": (f"runs/lora:{sched}/eval_after/accuracy", "%.1f")})
      for label, sched in (("fixed (plain LoRA)", "fixed"), ("hydra", "hydra"), ("hierarchical", "hierarchical"),
                           ("dynamic", "dynamic"))],
]

TRAINING = [
    Figure("docs/training.md", "Measured on 2 CPU cores: time ratio {time}, peak RSS ratio {rss}, identical loss "
           "trajectories.", "train_step.json",
           {"time": ("ratios_mobilepeft_over_peft/time", ".3f"), "rss": ("ratios_mobilepeft_over_peft/peak_rss", ".3f")}),
    Figure("README.md", "our LoRA step {time}x PEFT's time and {rss}x its peak memory with identical losses "
           "(`small` preset)", "train_step.json",
           {"time": ("ratios_mobilepeft_over_peft/time", ".3f"), "rss": ("ratios_mobilepeft_over_peft/peak_rss", ".3f")}),
    Figure("docs/distributed.md", "(`small` preset, {m}M parameters, batch 8, rank 16, fp32, 10 timed steps)",
           "train_throughput.json", {"m": ("model_parameters", "MB.1f")}),
    *[Figure("docs/distributed.md", f"| {label} | {{tp}} | {{sps}} | {{ms}} | {{mib}} | {{speed}}x | {{mem}}x |",
             "train_throughput.json",
             {"tp": (f"variants/{v}/trainable_parameters", ","), "sps": (f"variants/{v}/samples_per_s", ".2f"),
              "ms": lambda d, v=v: f"{1000 * d['variants'][v]['median_step_s']:.1f}",
              "mib": (f"variants/{v}/peak_memory_mib", ".0f"),
              "speed": (f"variants/{v}/throughput_vs_peft_lora", ".3f"),
              "mem": (f"variants/{v}/memory_vs_peft_lora", ".3f")})
      for label, v in (("mobilepeft LoRA", "mobilepeft-lora"), ("PEFT LoRA", "peft-lora"), ("full fine-tuning", "full"))],
    Figure("docs/distributed.md", "so full fine-tuning is only {pct}% slower.", "train_throughput.json",
           {"pct": lambda d: f"{100 * (1 - d['variants']['full']['throughput_vs_peft_lora']):.0f}"}),
    Figure("docs/distributed.md", "the gradients and Adam moments of {w}M weights, {mib} MiB more at the peak here.",
           "train_throughput.json",
           {"w": ("variants/full/trainable_parameters", "MB.1f"),
            "mib": lambda d: f"{d['variants']['full']['peak_memory_mib'] - d['variants']['peft-lora']['peak_memory_mib']:.0f}"}),
    Figure("README.md", "our LoRA trains {speed}x PEFT's samples/s at {mem}x its peak RSS, full fine-tuning {fspeed}x "
           "at {fmem}x;", "train_throughput.json",
           {"speed": ("variants/mobilepeft-lora/throughput_vs_peft_lora", ".3f"),
            "mem": ("variants/mobilepeft-lora/memory_vs_peft_lora", ".3f"),
            "fspeed": ("variants/full/throughput_vs_peft_lora", ".3f"),
            "fmem": ("variants/full/memory_vs_peft_lora", ".3f")}),
    Figure("docs/methods.md", "AdaRing at ring rank {rr} for the same parameter count", "adapter_overhead.json",
           {"rr": ("adaring_ring_rank", "d")}),
    *[Figure("docs/methods.md", f"| {m} | {{p}} | {{t}} | {{r}} | {{u}} | {{g}} |", "adapter_overhead.json",
             {"p": (f"methods/{m}/params_vs_lora", ".3f"), "t": (f"methods/{m}/step_time_vs_lora", ".3f"),
              "r": (f"methods/{m}/peak_rss_vs_lora", ".3f"), "u": (f"methods/{m}/adapter_forward_vs_base", ".3f"),
              "g": (f"methods/{m}/merged_forward_vs_base", ".3f")})
      for m in ("lora", "multihead", "dmlora", "adaring")],
    Figure("docs/methods.md", "keeps its activations ({pct} peak memory here).", "adapter_overhead.json",
           {"pct": lambda d: f"{100 * (d['methods']['multihead']['peak_rss_vs_lora'] - 1):+.0f}%"}),
    Figure("README.md", "merged models of every method run at {range}x the base model's latency",
           "adapter_overhead.json",
           {"range": _minmax(lambda d: [m["merged_forward_vs_base"] for m in d["methods"].values()], ".3f")}),
    Figure("docs/hydra.md", "**hydra / fixed = {ratio}** (summed step time {hs} s vs {fs} s; median step {hm} vs "
           "{fm} ms). The schedule's own work was {st} s of statistics on the 8 probe and {n} reallocation steps plus "
           "{rs} s of resizing, {own}% of the fixed run.", "schedule_overhead.json",
           {"ratio": ("ratio_hydra_over_fixed", ".3f"), "hs": ("runs/hydra/step_seconds_sum", ".1f"),
            "fs": ("runs/fixed/step_seconds_sum", ".1f"),
            "hm": lambda d: f"{1000 * d['runs']['hydra']['median_step_s']:.0f}",
            "fm": lambda d: f"{1000 * d['runs']['fixed']['median_step_s']:.0f}",
            "st": ("runs/hydra/schedule_seconds/statistics", ".2f"), "n": ("runs/hydra/allocations", "d"),
            "rs": ("runs/hydra/schedule_seconds/reallocation", ".2f"),
            "own": ("schedule_own_work_share_of_fixed", "%.1f")}),
    Figure("README.md", "`--schedule hydra` costs {ratio}x the wall time of `fixed` (demo model, 300 steps, lockstep "
           "measurement)", "schedule_overhead.json", {"ratio": ("ratio_hydra_over_fixed", ".3f")}),
]

_ONDEVICE_ROWS = (("tiny, 4 layers", "tiny", 4), ("1.4B shape, 1 layer", "mobilellama-1.4b", 1),
                  ("1.4B shape, 2 layers", "mobilellama-1.4b", 2))


def _ondevice_row(label: str, shape: str, layers: int) -> Figure:
    def g(key: Callable[[dict], Any], spec: str) -> Callable[[dict], str]:
        return lambda d: fmt(key(_row(d, shape, layers)), spec)
    ms = ".1f" if shape == "tiny" else ".0f"
    mb = ".1f" if shape == "tiny" else ".0f"
    return Figure("docs/on-device-training.md",
                  f"| {label} | {{seq}} | {{ort}} ms | {{pt}} ms | {{ratio}} | {{rss_ort}} / {{rss_pt}} MiB | "
                  "{lora} MB | {ckpt} MB | {overhead} |", "ondevice_train.json",
                  {"seq": g(lambda r: r["seq_len"], "d"), "ort": g(lambda r: r["train_step_ms"]["ort"], ms),
                   "pt": g(lambda r: r["train_step_ms"]["pytorch"], ms), "ratio": g(lambda r: r["ort_over_pytorch_time"], ".2f"),
                   "rss_ort": g(lambda r: r["train_peak_rss_mb"]["ort"], ".0f"),
                   "rss_pt": g(lambda r: r["train_peak_rss_mb"]["pytorch"], ".0f"),
                   "lora": g(lambda r: r["sizes"]["lora_bytes"], "MB.2f"),
                   "ckpt": g(lambda r: r["sizes"]["files"]["checkpoint"] + r["sizes"]["files"].get("checkpoint.data", 0),
                             "MB" + mb),
                   "overhead": g(lambda r: r["sizes"]["overhead_over_lora"], ".2f")})


ONDEVICE = [
    *[_ondevice_row(*row) for row in _ONDEVICE_ROWS],
    Figure("docs/on-device-training.md", "The whole decoder at 1.7B does not fit a phone (its fp32 frozen weights alone are "
           "{frozen} GB)", "ondevice_train.json", {"frozen": lambda d: f"{_frozen_full(d) / 1e9:.1f}"}),
    Figure("docs/on-device-training.md", "the LoRA tensors themselves (1.0) plus graphs and framing ({big} at the 1.4B "
           "shape; {tiny} for the tiny model,", "ondevice_train.json",
           {"big": _minmax(lambda d: [r["sizes"]["overhead_over_lora"] - 1 for r in d["rows"]
                                      if r["shape"] == "mobilellama-1.4b"], ".2f"),
            "tiny": lambda d: f"{_row(d, 'tiny', 4)['sizes']['overhead_over_lora'] - 1:.2f}"}),
    Figure("README.md", "training step takes {tiny}x (tiny model) and {big}x (MobileLLaMA-1.4B-shaped layers) the time "
           "of the same LoRA step in PyTorch at the same peak memory ({rss}x), and the training artifacts add {oh}x the "
           "LoRA bytes on top of the frozen weights.", "ondevice_train.json",
           {"tiny": lambda d: f"{_row(d, 'tiny', 4)['ort_over_pytorch_time']:.2f}",
            "big": lambda d: f"{_row(d, 'mobilellama-1.4b', 2)['ort_over_pytorch_time']:.2f}",
            "rss": _minmax(lambda d: [r["ort_over_pytorch_rss"] for r in d["rows"]], ".2f"),
            "oh": lambda d: f"{_row(d, 'mobilellama-1.4b', 2)['sizes']['overhead_over_lora']:.2f}"}),
]

_Q = "quant_agreement.json"
QUANT = [
    Figure("docs/deploy-executorch.md", "prefill logits rel. diff {d} (tolerance 0.001)", _Q,
           {"d": ("fp32_program_vs_model_rel_diff", ".1e")}),
    Figure("docs/deploy-executorch.md", "# 4-bit: {x}x smaller program", _Q, {"x": ratio("pte_bytes/none", "pte_bytes/8da4w", ".1f")}),
    Figure("docs/deploy-executorch.md", "lowered from (tolerance 0.15; measured {d} on the 4-layer demo model", _Q,
           {"d": ("8da4w_program_vs_quantized_modules_rel_diff", "short.1e")}),
    Figure("docs/deploy-executorch.md", "`benchmarks/quant_agreement.py` on the demo model (300 steps, {n} val "
           "questions, both bundles through `MultimodalRunner`): **{same}/{n2} = {share}% identical greedy answers** "
           "between 8da4w and fp32; exact-match accuracy fp32 {a32}%, 8da4w {a4}%; prefill logits: fp32 program vs model "
           "{d32}, 8da4w program vs torchao modules {d4}, vs the fp32 model {d4f} (relative to the largest logit); "
           "`.pte` {k32} KiB fp32 vs {k4} KiB 8da4w", _Q,
           {"n": ("samples", "d"), "n2": ("samples", "d"), "same": ("identical_answers", "d"),
            "share": ("identical_share", "%.1f"), "a32": ("accuracy/none", "%.1f"), "a4": ("accuracy/8da4w", "%.1f"),
            "d32": ("fp32_program_vs_model_rel_diff", "short.1e"),
            "d4": ("8da4w_program_vs_quantized_modules_rel_diff", "short.1e"),
            "d4f": ("8da4w_program_vs_fp32_model_rel_diff", ".2f"), "k32": ("pte_bytes/none", "KiB.0f"),
            "k4": ("pte_bytes/8da4w", "KiB.0f")}),
    Figure("docs/deploy-executorch.md", "the trained demo model measures {d}).", _Q,
           {"d": ("8da4w_program_vs_fp32_model_rel_diff", ".2f")}),
    Figure("README.md", "8da4w vs fp32 greedy answers through ExecuTorch's runner on the demo's {n} val questions", _Q,
           {"n": ("samples", "d")}),
]

_C = "coreml_sizes.json"
COREML = [
    Figure("docs/deploy-coreml.md", "exported graphs vs PyTorch: logits rel. diff {d} over prefill + 4 decode steps "
           "(tolerance 1e-04)", _C, {"d": ("graphs_vs_pytorch_rel_diff", ".1e")}),
    Figure("docs/deploy-coreml.md", "wrote outputs/bundles/coreml: VisionEncoder.mlpackage {v} MB, TextDecoder.mlpackage "
           "{t} MB (int4, iOS18)", _C,
           {"v": ("modes/int4/vision_encoder_bytes", "MB.1f"), "t": ("modes/int4/text_decoder_bytes", "MB.1f")}),
    Figure("docs/deploy-coreml.md", "decoder weight error |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| `{m}` | {{v_{m}}} MB | {{t_{m}}} MB | {{tot_{m}}} MB | {bold}{{r_{m}}}{bold} | {{e_{m}}} |"
        for m, bold in (("none", ""), ("int8", ""), ("int4", "**"), ("palettize4", ""))) + "\n", _C,
        {k: v for m in ("none", "int8", "int4", "palettize4") for k, v in {
            f"v_{m}": (f"modes/{m}/vision_encoder_bytes", "MB.2f"), f"t_{m}": (f"modes/{m}/text_decoder_bytes", "MB.2f"),
            f"tot_{m}": (f"modes/{m}/total_bytes", "MB.2f"), f"r_{m}": (f"modes/{m}/total_ratio", ".3f"),
            f"e_{m}": (lambda d, m=m: "0" if m == "none" else fmt(d["modes"][m]["text_decoder_weight_rel_rms"],
                                                                ".4f" if m == "int8" else ".3f"))}.items()}),
    Figure("docs/deploy-coreml.md", "At this size the vision encoder shrinks least ({r}x for int4)", _C,
           {"r": ("modes/int4/vision_encoder_ratio", ".2f")}),
    Figure("docs/deploy-coreml.md", "through the KV cache — stateful (tiny model) and stateless with the caches fed back "
           "(V2 checkpoint) — within 1e-4 (measured {d});", _C, {"d": ("graphs_vs_pytorch_rel_diff", "short.1e")}),
    Figure("docs/deploy-coreml.md", "int4 and palettized weights within 0.15 relative RMS (measured {e})", _C,
           {"e": lambda d: f"{max(d['modes'][m]['text_decoder_weight_rel_rms'] for m in ('int4', 'palettize4')):.2f}"}),
]

_N = "native_runner.json"


def _native_row(bundle: str, label: str, key: str, spec: str) -> Figure:
    b = {"fp32": "none", "8da4w": "8da4w"}[bundle]
    return Figure("docs/mobile.md", f"| {bundle} | {label} | {{py}} | {{na}} | {{r}} |", _N,
                  {"py": (f"bundles/{b}/median/python/{key}", spec), "na": (f"bundles/{b}/median/native/{key}", spec),
                   "r": (f"bundles/{b}/native_over_python/{key}", ".3f" if key == "peak_rss_mb" else ".2f")})


NATIVE = [
    _native_row("fp32", "decode tokens/s", "decode_tokens_per_s", ".0f"),
    _native_row("fp32", "prefill tokens/s", "prefill_tokens_per_s", ".0f"),
    _native_row("fp32", "vision encode ms", "vision_encode_ms", ".1f"),
    _native_row("fp32", "time to first token ms", "time_to_first_token_ms", ".1f"),
    _native_row("fp32", "peak RSS MB", "peak_rss_mb", ".0f"),
    _native_row("8da4w", "decode tokens/s", "decode_tokens_per_s", ".0f"),
    _native_row("8da4w", "prefill tokens/s", "prefill_tokens_per_s", ".0f"),
    _native_row("8da4w", "time to first token ms", "time_to_first_token_ms", ".1f"),
    _native_row("8da4w", "peak RSS MB", "peak_rss_mb", ".0f"),
    Figure("docs/mobile.md", "the native decode loop is faster (8da4w: {q}x in this run) because a "
           "one-token step costs ~{ms} ms here", _N,
           {"q": ("bundles/8da4w/native_over_python/decode_tokens_per_s", ".2f"),
            "ms": lambda d: f"{1000 / d['bundles']['none']['median']['native']['decode_tokens_per_s']:.1f}"}),
    Figure("docs/mobile.md", "the runner holds the program and nothing else ({mb} MB), while the Python process holds "
           "PyTorch. Load time is {na} ms vs {py} ms:", _N,
           {"mb": ("bundles/none/median/native/peak_rss_mb", ".0f"),
            "na": ("bundles/none/median/native/model_load_time_ms", ".0f"),
            "py": ("bundles/none/median/python/model_load_time_ms", ".0f")}),
    Figure("README.md", "runner decodes {f}x (fp32) and {q}x (8da4w) as fast as `mobilepeft bench` on the same program "
           "at {r}x its peak RSS ({na} vs {py} MB:", _N,
           {"f": ("bundles/none/native_over_python/decode_tokens_per_s", ".2f"),
            "q": ("bundles/8da4w/native_over_python/decode_tokens_per_s", ".2f"),
            "r": ("bundles/none/native_over_python/peak_rss_mb", ".2f"),
            "na": ("bundles/none/median/native/peak_rss_mb", ".0f"),
            "py": ("bundles/none/median/python/peak_rss_mb", ".0f")}),
]

_C17 = "coreml_sizes_1p7b.json"
COREML_1P7B = [
    Figure("docs/deploy-coreml.md", "the fp16 export took about {m} minutes on 2 cores (exported graphs vs PyTorch: "
           "{d} over prefill + 4 decode steps)", _C17,
           {"m": ("fp16_export_s", "min.0f"), "d": ("graphs_vs_pytorch_rel_diff", "short.1e")}),
    Figure("docs/deploy-coreml.md", "weight error (vision / decoder) |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| `{m}` | {{v_{m}}} MB | {{t_{m}}} MB | {{tot_{m}}} MB | {bold}{{r_{m}}}{bold} | {err} |"
        for m, bold, err in (("none", "", "0"), ("int8", "", "{ev_int8} / {et_int8}"),
                             ("int4", "**", "{ev_int4} / {et_int4}"))) + "\n", _C17,
        {k: v for m in ("none", "int8", "int4") for k, v in {
            f"v_{m}": (f"modes/{m}/vision_encoder_bytes", "MB.0f"), f"t_{m}": (f"modes/{m}/text_decoder_bytes", "MB.0f"),
            f"tot_{m}": (f"modes/{m}/total_bytes", "MB.0f"), f"r_{m}": (f"modes/{m}/total_ratio", ".3f"),
            f"ev_{m}": (f"modes/{m}/vision_encoder_weight_rel_rms", ".4f" if m == "int8" else ".3f"),
            f"et_{m}": (f"modes/{m}/text_decoder_weight_rel_rms", ".4f" if m == "int8" else ".3f")}.items()}),
    Figure("docs/deploy-coreml.md", "(int4 of the decoder: {s} s, the process at {g} GiB peak RSS by then;", _C17,
           {"s": ("modes/int4/text_decoder_compress_s", ".0f"),
            "g": lambda d: f"{d['modes']['int4']['text_decoder_compress_peak_rss_mib_so_far'] / 1024:.0f}"}),
    Figure("docs/deploy-executorch.md", "(measured by `benchmarks/coreml_sizes.py --preset mobilevlm-1.7b-shape`: "
           "{gib} GiB in {s} s at {rss} GiB peak RSS)", _C17,
           {"gib": ("model_write/bytes", "GiB.1f"), "s": ("model_write/seconds", ".0f"),
            "rss": lambda d: f"{d['model_write']['peak_rss_mib'] / 1024:.1f}"}),
]

EXTRA = [
    Figure("docs/mobile.md", "Hashing costs {s} s per GB here (`benchmarks/verify_speed.py`)", "verify_speed.json",
           {"s": ("seconds_per_gb", ".1f")}),
    Figure("docs/safety.md", "Hashing a 1 GB `.pte` takes {s} s here (`benchmarks/verify_speed.py`)", "verify_speed.json",
           {"s": ("seconds_per_gb", ".1f")}),
    Figure("docs/on-device-training.md", "Measured by `benchmarks/ort_export_large.py`: a {layers}-layer "
           "MobileLLaMA-1.4B-shaped decoder ({gb} GB fp32) exported in {s} s with {gib} GiB peak RSS on the 2-core "
           "development machine; self-test rel. diff {d}.", "ort_export_large.json",
           {"layers": ("layers", "d"), "gb": ("frozen_bytes", "GB.1f"), "s": ("export_s", ".0f"),
            "gib": lambda d: f"{d['export_peak_rss_mib'] / 1024:.1f}", "d": ("selftest_rel_diff", "short.0e")}),
]


LOOP_RUN = "runs/lora:fixed/loop"


LOOP = [
    Figure("README.md", "personalize   ORT eval loss {b} -> {a} in {n} steps (median step {ms} ms, batch {bs})", "demo.json",
           {"b": (f"{LOOP_RUN}/personalize/eval_loss_before", ".3f"), "a": (f"{LOOP_RUN}/personalize/eval_loss_after", ".3f"),
            "n": (f"{LOOP_RUN}/personalize/steps", "d"), "ms": (f"{LOOP_RUN}/personalize/train_step_ms_median", ".0f"),
            "bs": (f"{LOOP_RUN}/personalize/batch_size", "d")}),
    Figure("README.md", "user's words  before {b}/{n} -> after {a}/{n2} held-out answers", "demo.json",
           {"b": (f"{LOOP_RUN}/passes/0/correct", "d"), "a": (f"{LOOP_RUN}/passes/1/correct", "d"),
            "n": lambda d: str(len(get(d, LOOP_RUN)["references"])), "n2": lambda d: str(len(get(d, LOOP_RUN)["references"]))}),
    Figure("README.md", "triangle; {k}/{n} of those name the right shape", "demo.json",
           {"k": (f"{LOOP_RUN}/base_right_shape", "d"), "n": lambda d: str(len(get(d, LOOP_RUN)["references"]))}),
    Figure("README.md", "the base recognises the shape in {k} of the {n} held-out", "demo.json",
           {"k": (f"{LOOP_RUN}/base_right_shape", "d"), "n": lambda d: str(len(get(d, LOOP_RUN)["references"]))}),
    Figure("README.md", "swap          {ms} ms in the answering process (bench: median {bench} ms); RSS {r0} -> {r1} MB",
           "demo.json", {"ms": (f"{LOOP_RUN}/passes/1/swap_ms", ".2f"), "bench": (f"{LOOP_RUN}/speed/adapter_swap_ms", ".2f"),
                         "r0": (f"{LOOP_RUN}/passes/1/rss_before_swap_mb", ".1f"),
                         "r1": (f"{LOOP_RUN}/passes/1/rss_after_swap_mb", ".1f")}),
    Figure("README.md", "speed         decode {d} tok/s, prefill {p} tok/s, first token after a swap {t} ms", "demo.json",
           {"d": (f"{LOOP_RUN}/speed/decode_tokens_per_s", ".0f"), "p": (f"{LOOP_RUN}/speed/prefill_tokens_per_s", ".0f"),
            "t": (f"{LOOP_RUN}/speed/time_to_first_token_after_swap_ms", ".1f")}),
    Figure("README.md", "sizes         adapter.ptd {a} MB vs model.pte {p} MB", "demo.json",
           {"a": (f"{LOOP_RUN}/files/adapter.ptd", "MB.2f"), "p": (f"{LOOP_RUN}/files/model.pte", "MB.1f")}),
    Figure("README.md", "trained in {s} s", "demo.json", {"s": ("runs/lora:fixed/printed/trained_s", ".0f")}),
    Figure("docs/on-device-loop.md", "held-out answers in the user's words from {b}/{n} to {a}/{n2} in {steps} steps (median "
           "step {ms} ms); before it, {k}/{n3} of the model's answers", "demo.json",
           {"b": (f"{LOOP_RUN}/passes/0/correct", "d"), "a": (f"{LOOP_RUN}/passes/1/correct", "d"),
            "n": lambda d: str(len(get(d, LOOP_RUN)["references"])), "n2": lambda d: str(len(get(d, LOOP_RUN)["references"])),
            "n3": lambda d: str(len(get(d, LOOP_RUN)["references"])), "k": (f"{LOOP_RUN}/base_right_shape", "d"),
            "steps": (f"{LOOP_RUN}/personalize/steps", "d"), "ms": (f"{LOOP_RUN}/personalize/train_step_ms_median", ".0f")}),
    Figure("docs/on-device-loop.md", "the swap takes {ms} ms and RSS goes from {r0} to {r1} MB", "demo.json",
           {"ms": (f"{LOOP_RUN}/passes/1/swap_ms", ".2f"), "r0": (f"{LOOP_RUN}/passes/1/rss_before_swap_mb", ".1f"),
            "r1": (f"{LOOP_RUN}/passes/1/rss_after_swap_mb", ".1f")}),
]


def _cost_row(label: str, cell: str, keys: dict[str, tuple[str, str]]) -> Figure:
    """One row of docs/on-device-loop.md's cost table: ``cell`` filled from the tiny JSON, then from the
    1.7B JSON (read here: a figure has one JSON of its own)."""
    big = {f"{k}_big": (lambda d, path=path, spec=spec: fmt(get(load("adapter_cost_1p7b-shape.json"), path), spec))
           for k, (path, spec) in keys.items()}
    big_cell = re.sub(r"\{(\w+)\}", r"{\1_big}", cell)
    return Figure("docs/on-device-loop.md", f"| {label} | {cell} | {big_cell} |", "adapter_cost_tiny.json", {**keys, **big})


COST = [
    _cost_row("decode, merged → as data", "{m} → {a} tok/s",
              {"m": ("median/merged/decode_tokens_per_s", ".1f"), "a": ("median/as_data/decode_tokens_per_s", ".1f")}),
    _cost_row("decode time, as data / merged", "{r}×", {"r": ("as_data_over_merged_time/decode", ".3f")}),
    _cost_row("prefill time, as data / merged", "{r}×", {"r": ("as_data_over_merged_time/prefill", ".3f")}),
    _cost_row("swap (median of 10)", "{ms} ms", {"ms": ("swap/adapter_swap_ms", ".2f")}),
    _cost_row("RSS before → after the swaps", "{b} → {a} MB",
              {"b": ("swap/rss_before_swap_mb", ".0f"), "a": ("swap/rss_after_swap_mb", ".0f")}),
    _cost_row("first token after a swap (image + prompt)", "{ms} ms", {"ms": ("swap/time_to_first_token_after_swap_ms", ".0f")}),
    _cost_row("peak RSS, merged → as data", "{m} → {a} MB",
              {"m": ("median/merged/peak_rss_mb", ".0f"), "a": ("median/as_data/peak_rss_mb", ".0f")}),
    _cost_row("adapter.ptd vs model.pte", "{a} MB vs {p} MB",
              {"a": ("file_bytes/adapter.ptd", "MB.2f"), "p": ("file_bytes/model.pte", "MB.1f")}),
    Figure("docs/on-device-loop.md", "named data costs {n} µs per call, the same tensors as method inputs {i} µs, and as ordinary "
           "constants packed by XNNPACK (not replaceable, the reference) {c} µs", "adapter_mechanisms.json",
           {"n": ("mechanisms/named_data/us_per_call", ".0f"), "i": ("mechanisms/method_inputs/us_per_call", ".0f"),
            "c": ("mechanisms/merged_constants/us_per_call", ".0f")}),
    Figure("docs/on-device-loop.md", ": {n} LoRA blocks of {d} → {r} → {d2} in a row", "adapter_mechanisms.json",
           {"n": ("modules", "d"), "d": ("dim", "d"), "r": ("rank", "d"), "d2": ("dim", "d")}),
    Figure("docs/on-device-loop.md", "At the 1.7B shape decode is {r}× the merged model's time", "adapter_cost_1p7b-shape.json",
           {"r": ("as_data_over_merged_time/decode", ".3f")}),
    Figure("docs/on-device-loop.md", "and prefill is {r}×.", "adapter_cost_1p7b-shape.json",
           {"r": ("as_data_over_merged_time/prefill", ".3f")}),
    Figure("docs/on-device-loop.md", "The swap copies {mb} MB and leaves RSS", "adapter_cost_1p7b-shape.json",
           {"mb": ("file_bytes/adapter.ptd", "MB.0f")}),
    Figure("docs/on-device-loop.md", "the {gb} GB base is neither", "adapter_cost_1p7b-shape.json",
           {"gb": ("file_bytes/model.pte", "GB.0f")}),
]

def _split_row(k: int) -> Figure:
    """One row of docs/on-device-training.md's K table (benchmarks/split_quality.py)."""
    def step(d: dict[str, Any]) -> str:
        return f"{statistics.mean(r['train_step_ms_median'] for r in d['runs'] if r['train_layers'] == k):.0f}"

    label = f"{k} (all)" if k == 4 else str(k)
    return Figure("docs/on-device-training.md", f"| {label} | {{acc}}% | {{held}} | {{sel}} | {{ms}} ms |",
                  "split_quality.json", {"acc": (f"held_out_accuracy_after/{k}", "%.1f"), "held": (f"held_out_share/{k}", ".2f"),
                                         "sel": (f"selection_share/{k}", ".2f"), "ms": step})


P17 = "modes/top4"


def _p17_file(*names: str) -> Callable[[dict[str, Any]], str]:
    return lambda d: f"{sum(get(d, f'{P17}/export/files_bytes')[n] for n in names) / 1e9:.2f}"


SPLIT = [
    Figure("docs/on-device-training.md", "estimates {f} MiB for the frozen graphs and {t} MiB for training, against {mf} and {mt} MiB "
           "measured without the interpreter", "personalize_1p7b.json",
           {"f": (f"{P17}/session/estimate_mib/frozen_graphs", ".0f"), "t": (f"{P17}/session/estimate_mib/training", ".0f"),
            "mf": lambda d: f"{get(d, f'{P17}/session/phases/frozen_graphs/peak_rss_mib') - get(d, f'{P17}/session/python_baseline_rss_mib'):.0f}",
            "mt": lambda d: f"{get(d, f'{P17}/session/phases/training/peak_rss_mib') - get(d, f'{P17}/session/python_baseline_rss_mib'):.0f}"}),
    Figure("README.md", "hold. Measured at the real shape with K = 4 of 24: peak RSS "
           "{m} MiB per personalization step (whole process), {s} s per step of 256 tokens", "personalize_1p7b.json",
           {"m": ("personalization_step_peak_rss_mib", ".0f"), "s": (f"{P17}/session/step_seconds", ".2f")}),
    Figure("README.md", "half of the layers keep {s} of the all-layers gain", "split_quality.json",
           {"s": ("default_held_out_share", ".2f")}),
    Figure("docs/on-device-training.md", "| export | {s} s, peak {g} GiB | stopped at {fg} GiB after {fs} s,", "personalize_1p7b.json",
           {"s": (f"{P17}/export/seconds", ".0f"), "g": (f"{P17}/export/peak_rss_gib", ".1f"),
            "fg": ("modes/full/export/peak_rss_gib", ".1f"), "fs": ("modes/full/export/seconds", ".0f")}),
    Figure("docs/on-device-training.md", "(once per sample) | peak {m} MiB |", "personalize_1p7b.json",
           {"m": (f"{P17}/session/phases/frozen_graphs/peak_rss_mib", ".0f")}),
    Figure("docs/on-device-training.md", "| phase 2: training step | peak {m} MiB, {s} s per step, {t} tokens/s |",
           "personalize_1p7b.json", {"m": (f"{P17}/session/phases/training/peak_rss_mib", ".0f"),
                                     "s": (f"{P17}/session/step_seconds", ".2f"), "t": (f"{P17}/session/tokens_per_s", ".0f")}),
    Figure("docs/on-device-training.md", "(target 3072) | **{m}** |", "personalize_1p7b.json",
           {"m": ("personalization_step_peak_rss_mib", ".0f")}),
    Figure("docs/on-device-training.md", "| `vision_encoder.onnx` | {g} GB |", "personalize_1p7b.json",
           {"g": _p17_file("vision_encoder.onnx")}),
    Figure("docs/on-device-training.md", "(+ `.data`, int8) | {g} GB |", "personalize_1p7b.json",
           {"g": _p17_file("decoder_prefix.onnx", "decoder_prefix.onnx.data")}),
    Figure("docs/on-device-training.md", "LoRA) | {g} GB |", "personalize_1p7b.json", {"g": _p17_file("checkpoint")}),
    Figure("docs/on-device-training.md", "| all files | {g} GB |", "personalize_1p7b.json",
           {"g": lambda d: f"{get(d, f'{P17}/export/total_bytes') / 1e9:.2f}"}),
    Figure("docs/on-device-training.md", "the interpreter and its imports are {m} MiB of those peaks", "personalize_1p7b.json",
           {"m": (f"{P17}/session/python_baseline_rss_mib", ".0f")}),
    Figure("docs/on-device-training.md", "the fp32 CLIP tower ({v} GB), then the int8 layers below K ({p} GB:",
           "personalize_1p7b.json", {"v": _p17_file("vision_encoder.onnx"),
                                     "p": _p17_file("decoder_prefix.onnx", "decoder_prefix.onnx.data")}),
    *[_split_row(k) for k in range(1, 5)],
    Figure("docs/on-device-training.md", "before personalization it is {b}%.", "split_quality.json",
           {"b": ("held_out_accuracy_before", "%.1f")}),
    Figure("docs/on-device-training.md", "is K = {k}, half the layers; on the held-out questions it keeps {s} of the gain",
           "split_quality.json", {"k": ("default_train_layers", "d"), "s": ("default_held_out_share", ".2f")}),
]

def _profile_row(name: str, key: str) -> Callable[[dict], str]:
    """A value of the ``by_instruction`` row named ``name`` of a decode profile."""
    def value(d: dict) -> str:
        row = next(r for r in d["by_instruction"] if r["name"] == name)
        return {"count": f"{row['count']}", "decode_ms": f"{row['decode_ms']:.1f}",
                "decode_share": f"{100 * row['decode_share']:.0f}%"}[key]
    return value


def _profile_table(names: list[str], letters: tuple[str, str, str]) -> dict[str, Callable[[dict], str]]:
    out = {}
    for k, name in enumerate(names, start=1):
        for letter, key in zip(letters, ("count", "decode_ms", "decode_share"), strict=True):
            out[f"{letter}{k}"] = _profile_row(name, key)
    return out


_D = "deploy_bench.json"

PROFILE_BEFORE = [
    Figure("docs/deploy-executorch.md", """| `text_decoder` call | 1 | {dt} | |
| XNNPACK 4-bit linears (`Fully Connected QB4W`) | {c1} | {d1} | {s1} |
| `index_put.out` (cache write: a new copy of the cache) | {c2} | {d2} | {s2} |
| `copy_` (that copy written back into the cache buffer) | {c3} | {d3} | {s3} |
| `expand_copy.out` (SDPA's decomposition broadcasting the cache) | {c4} | {d4} | {s4} |
| `mul.Scalar_out` (SDPA's scaling of q and k) | {c5} | {d5} | {s5} |""", "decode_profile_mobilevlm-1.7b-shape_before.json",
           {"dt": ("text_decoder_call_ms/decode_ms", ".1f"),
            **_profile_table(["XNNPACK Fully Connected (NC, QDU8, F32, QB4W) GEMM", "index_put.out", "copy_",
                              "expand_copy.out", "mul.Scalar_out"], ("c", "d", "s"))}),
    Figure("docs/deploy-executorch.md", "Decode read the 8da4w decoder weights at {bf} of the copy bandwidth",
           "decode_profile_mobilevlm-1.7b-shape_before.json", {"bf": ("decode_bandwidth_fraction", ".2f")}),
]
PROFILE_AFTER = [
    Figure("docs/deploy-executorch.md", """| `text_decoder` call | 1 | {at} | |
| XNNPACK 4-bit linears (`Fully Connected QB4W`) | {a1} | {e1} | {t1} |
| XNNPACK `Static Reshape` (the cache views, copied inside the delegate) | {a2} | {e2} | {t2} |
| XNNPACK `Batch Matrix Multiply` (attention) | {a3} | {e3} | {t3} |
| XNNPACK 8-bit `lm_head` (`Fully Connected QC8W`) | {a4} | {e4} | {t4} |
| XNNPACK delegate overhead | {a5} | {e5} | {t5} |
| `index_put_` (the cache write, in place) | {a6} | {e6} | {t6} |""", "decode_profile_mobilevlm-1.7b-shape_step1.json",
           {"at": ("text_decoder_call_ms/decode_ms", ".1f"),
            **_profile_table(["XNNPACK Fully Connected (NC, QDU8, F32, QB4W) GEMM", "XNNPACK Static Reshape (NC)",
                              "XNNPACK Batch Matrix Multiply (NC, F32) GEMM",
                              "XNNPACK Fully Connected (NC, QDU8, F32, QC8W) GEMM",
                              "XNNPACK delegate overhead (call minus its operators)", "index_put_"], ("a", "e", "t"))}),
    Figure("docs/deploy-executorch.md", "Decode then took {at} ms per token ({atps} tok/s) and read the weights at {af} "
           "of the copy bandwidth ({bw} GB/s in that run; {gb} GB of decoder weights per token). Prefill was "
           "{pt} ms for the 176 tokens, {pf} of it in the 4-bit linears.",
           "decode_profile_mobilevlm-1.7b-shape_step1.json",
           {"at": ("text_decoder_call_ms/decode_ms", ".1f"),
            "atps": lambda d: f"{1000 / d['text_decoder_call_ms']['decode_ms']:.1f}",
            "af": ("decode_bandwidth_fraction", ".2f"), "bw": ("copy_bandwidth_gb_s", ".1f"),
            "gb": ("decoder_weight_bytes_per_token", "GB.2f"), "pt": ("text_decoder_call_ms/prefill_ms", ".0f"),
            "pf": lambda d: f"{100 * next(r['prefill_share'] for r in d['by_instruction'] if 'QB4W' in r['name']):.0f}%"}),
]

PROFILE_FINAL = [
    Figure("docs/deploy-executorch.md", """| `text_decoder` call | 1 | {at} | |
| XNNPACK 4-bit linears (`Fully Connected QB4W`) | {a1} | {e1} | {t1} |
| XNNPACK `Batch Matrix Multiply` (attention) | {a2} | {e2} | {t2} |
| XNNPACK 8-bit `lm_head` (`Fully Connected QC8W`) | {a3} | {e3} | {t3} |
| XNNPACK delegate overhead | {a4} | {e4} | {t4} |
| `index_put_` (the cache write, in place) | {a5} | {e5} | {t5} |""", "decode_profile_mobilevlm-1.7b-shape.json",
           {"at": ("text_decoder_call_ms/decode_ms", ".1f"),
            **_profile_table(["XNNPACK Fully Connected (NC, QDU8, F32, QB4W) GEMM",
                              "XNNPACK Batch Matrix Multiply (NC, F32) GEMM",
                              "XNNPACK Fully Connected (NC, QDU8, F32, QC8W) GEMM",
                              "XNNPACK delegate overhead (call minus its operators)", "index_put_"], ("a", "e", "t"))}),
    Figure("docs/deploy-executorch.md", "Decode takes {at} ms per token ({atps} tok/s) with ETDump recording; prefill {pt} ms "
           "for the 176 tokens, {pf} of it in the 4-bit linears.", "decode_profile_mobilevlm-1.7b-shape.json",
           {"at": ("text_decoder_call_ms/decode_ms", ".1f"),
            "atps": lambda d: f"{1000 / d['text_decoder_call_ms']['decode_ms']:.1f}",
            "pt": ("text_decoder_call_ms/prefill_ms", ".0f"),
            "pf": lambda d: f"{100 * next(r['prefill_share'] for r in d['by_instruction'] if 'QB4W' in r['name']):.0f}%"}),
    Figure("docs/deploy-executorch.md", "(the copy bandwidth measured {b1} GB/s for step 1 and {b2} GB/s here)",
           "decode_profile_mobilevlm-1.7b-shape.json",
           {"b1": lambda d: f"{load('decode_profile_mobilevlm-1.7b-shape_step1.json')['copy_bandwidth_gb_s']:.1f}",
            "b2": ("copy_bandwidth_gb_s", ".1f")}),
    Figure("docs/deploy-executorch.md", "Against this run's {b2} GB/s, decode reads the weights at {f} of the copy bandwidth; "
           "the side-by-side run below, without ETDump, measures {bf} against its own {bw} GB/s",
           "decode_profile_mobilevlm-1.7b-shape.json",
           {"b2": ("copy_bandwidth_gb_s", ".1f"), "f": ("decode_bandwidth_fraction", ".2f"),
            "bf": lambda d: f"{load(_D)['ratios']['bandwidth_fraction_8da4w']:.2f}",
            "bw": lambda d: f"{load(_D)['copy_bandwidth_gb_s']:.1f}"}),
]

PROFILE_README = [
    Figure("README.md", "decode went from {b} to {a} ms per token in the profile", "decode_profile_mobilevlm-1.7b-shape.json",
           {"b": lambda d: f"{load('decode_profile_mobilevlm-1.7b-shape_before.json')['text_decoder_call_ms']['decode_ms']:.1f}",
            "a": ("text_decoder_call_ms/decode_ms", ".1f")}),
    Figure("README.md", "ExecuTorch 8da4w decodes {e} tok/s against llama.cpp Q4_0's {l} on the same decoder weights, 2 x86 "
           "cores, in one run: {d}x llama.cpp's decode and {p}x its prefill, reading the weights at {f} of the measured "
           "copy bandwidth", _D,
           {"e": ("results/executorch_8da4w/decode_tokens_per_s", ".2f"), "l": ("llamacpp/decode_tokens_per_s", ".2f"),
            "d": ("ratios/executorch_vs_llamacpp_decode", ".2f"), "p": ("ratios/executorch_vs_llamacpp_prefill", ".2f"),
            "f": ("ratios/bandwidth_fraction_8da4w", ".2f")}),
]


def _deploy_row(label: str, runtime: str) -> Figure:
    return Figure("docs/deploy-executorch.md", f"| {label} | {{d}} ({{lo}}–{{hi}}) | {{p}} | {{t}} | {{v}} | {{l}} | {{f}} MB |", _D,
                  {"d": (f"results/{runtime}/decode_tokens_per_s", ".2f"),
                   "lo": (f"results/{runtime}/decode_tokens_per_s_min", ".2f"),
                   "hi": (f"results/{runtime}/decode_tokens_per_s_max", ".2f"),
                   "p": (f"results/{runtime}/prefill_tokens_per_s", ".1f"),
                   "t": (f"results/{runtime}/time_to_first_token_ms", ".0f"),
                   "v": (f"results/{runtime}/vision_encode_ms", ".0f"),
                   "l": (f"results/{runtime}/model_load_time_ms", ".0f"),
                   "f": (f"pte_bytes/{runtime.removeprefix('executorch_')}", "MB.0f")})


DEPLOY = [
    _deploy_row("ExecuTorch XNNPACK 8da4w", "executorch_8da4w"),
    _deploy_row("ExecuTorch XNNPACK 8da4w, LoRA merged", "executorch_8da4w_merged"),
    Figure("docs/deploy-executorch.md", "| llama.cpp Q4_0 (llama-cpp-python {ver}) | {d} ({lo}–{hi}) | {p} | — (text only) "
           "| — | {l} | {f} MB |", _D,
           {"ver": lambda d: d["llamacpp"]["llama_cpp_python"], "d": ("llamacpp/decode_tokens_per_s", ".2f"),
            "lo": ("llamacpp/decode_tokens_per_s_min", ".2f"), "hi": ("llamacpp/decode_tokens_per_s_max", ".2f"),
            "p": ("llamacpp/prefill_tokens_per_s", ".1f"), "l": ("llamacpp/model_load_time_ms", ".0f"),
            "f": ("llamacpp/gguf_bytes", "MB.0f")}),
    Figure("docs/deploy-executorch.md", "(`executorch_vs_llamacpp_decode`) | {d} |", _D,
           {"d": ("ratios/executorch_vs_llamacpp_decode", ".2f")}),
    Figure("docs/deploy-executorch.md", "(`executorch_vs_llamacpp_prefill`) | {p} |", _D,
           {"p": ("ratios/executorch_vs_llamacpp_prefill", ".2f")}),
    Figure("docs/deploy-executorch.md", "| decode bandwidth used, 8da4w | {f} of the {bw} GB/s copy bandwidth ({gb} GB read "
           "per token) |", _D,
           {"f": ("ratios/bandwidth_fraction_8da4w", ".2f"), "bw": ("copy_bandwidth_gb_s", ".1f"),
            "gb": ("decoder_bytes_per_token/8da4w", "GB.2f")}),
    Figure("docs/deploy-executorch.md", "| merged / base latency (8da4w) | {d} decode, {t} TTFT |", _D,
           {"d": ("ratios/merged_over_base_decode_latency", ".3f"), "t": ("ratios/merged_over_base_ttft", ".3f")}),
    Figure("docs/deploy-executorch.md", "the 8da4w decoder at {f} of the copy bandwidth measured in the same run", _D,
           {"f": ("ratios/bandwidth_fraction_8da4w", ".2f")}),
    Figure("docs/deploy-executorch.md", "gives the PyTorch model's logits within {r} relative", _D,
           {"r": ("llamacpp/f32_gguf_vs_pytorch_rel_diff", "short.1e")}),
    Figure("docs/deploy-executorch.md", "the 8da4w program is within {r} of the torchao-quantized PyTorch modules it was "
           "lowered from (tolerance 0.15; {f} from the fp32 model", _D,
           {"r": ("selftest_rel_diff/8da4w", "short.1e"), "f": ("fp32_rel_diff_8da4w/8da4w", ".2f")}),
    Figure("docs/deploy-executorch.md", "overhead decides: ExecuTorch 8da4w decodes {e} tok/s against llama.cpp's {l} ({d}x; "
           "prefill {p}x), and ExecuTorch fp32 decodes {f}x PyTorch eager.", "deploy_bench_tiny.json",
           {"e": ("results/executorch_8da4w/decode_tokens_per_s", ".0f"), "l": ("llamacpp/decode_tokens_per_s", ".0f"),
            "d": ("ratios/executorch_vs_llamacpp_decode", ".2f"), "p": ("ratios/executorch_vs_llamacpp_prefill", ".2f"),
            "f": ("ratios/executorch_fp32_over_eager_decode", ".2f")}),
    Figure("docs/deploy-executorch.md", "the native runner removes the binding cost per token ({q}x the Python bindings' "
           "8da4w decode", _N, {"q": ("bundles/8da4w/native_over_python/decode_tokens_per_s", ".2f")}),
    Figure("docs/deploy-executorch.md", "and {r} at the 1.7B shape's 24 layers in `deploy_bench.py`'s run", _D,
           {"r": ("selftest_rel_diff/8da4w", "short.1e")}),
]

FIGURES: list[Figure] = [*DEPLOY, *PROFILE_BEFORE, *PROFILE_AFTER, *PROFILE_FINAL, *PROFILE_README, *QUALITY, *QUALITY_SEARCH, *QUALITY_DEEP, *QUALITY_WHOLE, *QUALITY_RANK1, *QUALITY_RANK1_WIDE, *QUALITY_LORA16, *QUALITY_ADARING_WIDE, *QUALITY_ADARING_ALPHA, *QUALITY_METHODS_SEARCH2, *SPLIT, *DEMO, *LOOP, *COST, *DEMO_METHODS, *TRAINING, *ONDEVICE, *QUANT, *COREML, *COREML_1P7B, *NATIVE, *EXTRA]

#: Figures in the documents no committed JSON backs yet: (document, the note it carries next to them).
UNCHECKED: list[tuple[str, str]] = [
    ("docs/hydra.md", "historical figures in this paragraph, which the current code cannot re-measure and no JSON "
     "backs"),
    ("docs/hydra.md", "The rank, reallocation and `--temperature 0.25` figures in the last three points come from the "
     "runs' rank histories and a separate run, neither committed under `docs/results/`"),
]


def check(figures: list[Figure] | None = None, unchecked: list[tuple[str, str]] | None = None,
          root: Path = ROOT) -> list[str]:
    """Problems: missing JSON, text not found (or found twice), figures that disagree with their JSON,
    notes on figures without JSON that are gone. ``root``: the repository (tests pass a copy)."""
    problems = []
    for fig in figures if figures is not None else FIGURES:
        if not (root / "docs" / "results" / fig.json).is_file():
            problems.append(f"{fig.doc}: docs/results/{fig.json} is missing (run its benchmark)")
            continue
        doc = (root / fig.doc).read_text()
        matches = list(fig.pattern().finditer(doc))
        if len(matches) != 1:
            problems.append(f"{fig.doc}: {'not found' if not matches else 'found twice'}: {fig.text!r} "
                            "(the text changed: update benchmarks/figures.py)")
            continue
        try:
            want = fig.render_values(load(fig.json, root))
        except (KeyError, IndexError, TypeError, StopIteration) as exc:
            problems.append(f"{fig.doc}: docs/results/{fig.json} lacks {exc!r} for {fig.text!r} (re-run its benchmark)")
            continue
        for name, value in want.items():
            if matches[0].group(name) != value:
                problems.append(f"{fig.doc}: {name} is {matches[0].group(name)!r} but docs/results/{fig.json} "
                                f"gives {value!r} in {fig.text!r}")
    for doc, note in UNCHECKED if unchecked is None else unchecked:
        if note not in " ".join((root / doc).read_text().split()):
            problems.append(f"{doc}: the note on figures without JSON is gone: {note!r}")
    return problems


def fix() -> list[str]:
    """Rewrite every figure from its JSON in place; returns 'doc: old -> new' lines."""
    changes = []
    for fig in FIGURES:
        if not (RESULTS / fig.json).is_file():
            continue
        path = ROOT / fig.doc
        doc = path.read_text()
        matches = list(fig.pattern().finditer(doc))
        if len(matches) != 1:
            continue
        try:
            m, want = matches[0], fig.render_values(load(fig.json))
        except (KeyError, IndexError, TypeError, StopIteration):
            continue
        for name in sorted(want, key=lambda n: m.start(n), reverse=True):
            if m.group(name) != want[name]:
                changes.append(f"{fig.doc}: {m.group(name)} -> {want[name]}  ({name} in {fig.json})")
                doc = doc[:m.start(name)] + want[name] + doc[m.end(name):]
        path.write_text(doc)
    return changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fix", action="store_true", help="rewrite the figures in the documents from the JSON")
    args = ap.parse_args()
    if args.fix:
        for line in reversed(fix()):
            print(line)
    problems = check()
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
