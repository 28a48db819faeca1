"""`elasticity demo` (what `make demo` runs): every experiment on the embedded world, one report directory.

Steps, each a cached stage (a second `make demo` reuses them all):
1. build the embedded world and pre-train the default ~1M-parameter model on it;
2. score the model on held-out text of every component beside the true entropy rates, and sample reviews
   from held-out openings (oracle-scored positive rate and sentiment consistency);
3. the theorem checked numerically (`elasticity theory`);
4. rebound: align on Q1 positive reviews, fine-tune on Q2 negative ones, measure the fall; and its compression
   rates against the theorem (`elasticity rates`: the ratio of the rates' derivatives against k, Hooke's form);
5. resistance: slices of one positive-review SFT, fine-tuned on each other's answers, forward vs inverse.
The report directory (`runs/demo-<hash>/`) holds `summary.md`, `summary.json` and copies of every table and
figure (resistance's under `resistance/`, the rates' under `rates/`), so it can be read, shared or archived on
its own. Its path is printed last.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from elasticity.config import InputPath
from elasticity.experiments import rebound, resistance
from elasticity.experiments.pretrain import Config as PretrainConfig
from elasticity.experiments.pretrain import pretrain_model, report_stage
from elasticity.experiments.rates import Config as RatesConfig
from elasticity.experiments.rates import rates_stage
from elasticity.experiments.world_inputs import preset_config, rebound_files, resistance_files
from elasticity.runs import Run, run_stage
from elasticity.theory.command import Config as TheoryConfig
from elasticity.theory.command import compute as theory_stage
from elasticity.theory.command import summary_lines as theory_lines
from elasticity.world.command import build_world


@dataclass(frozen=True)
class Config:
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # = configs/pretrain.yaml
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    rebound: bool = True  # run the rebound experiment (the main result); false = world, model, theory only
    rebound_preset: InputPath = "configs/rebound-demo.yaml"  # its grid and settings; the demo fills in the paths
    resistance: bool = True  # run the resistance experiment (forward vs inverse alignment, Table 1)
    resistance_preset: InputPath = "configs/resistance-demo.yaml"  # its settings; the demo fills in the paths


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _copy(src: Path, dest: Path, names: list[str]) -> list[str]:
    copied = []
    for name in names:
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)
            copied.append(name)
    return copied


def _results(stage: Run) -> list[str]:
    """A stage's tables and figures (not its config and provenance)."""
    return sorted(p.name for p in stage.path.glob("*") if p.suffix in (".png", ".csv", ".md", ".json")
                  and p.name != "meta.json")


def _pretrain_section(report: Run) -> list[str]:
    s = json.loads(report.file("samples_report.json").read_text())
    c = s["consistency"]
    return [
        "## The pre-trained model",
        "",
        "Held-out bits/token beside each component's true entropy rate (the gap is what the model has not learned):",
        "",
        report.file("table.md").read_text(),
        f"Sampled from {s['samples']} held-out review openings: positive rate {s['positive_rate']:.3f} "
        f"+- {s['positive_rate_se']:.3f} (oracle-scored; the pre-training mixture implies "
        f"{s['positive_rate_implied_by_mixture']:.3f}); sentiment kept from the first sentiment word to the rating "
        f"in {c['consistent']}/{c['judged']} reviews ({c['rate']:.1%}); {s['exact_share']:.1%} of samples are "
        "exactly in the world's language.",
        "",
    ]


def rebound_config(preset: str, world: Run, model: Run):
    """The rebound preset with the world's files and the pre-trained model filled in."""
    return preset_config(rebound.Config, preset, "rebound_preset", {"model": str(model.path), **rebound_files(world)})


def resistance_config(preset: str, world: Run, model: Run):
    """The resistance preset: align on the world's positive reviews, answer its evaluation openings."""
    return preset_config(resistance.Config, preset, "resistance_preset",
                         {"model": str(model.path), **resistance_files(world)})


def demo_stage(cfg: Config, runs_root: Path) -> Run:
    started = time.time()
    _say("1/5 world and default model (cached after the first run)")
    world = build_world(cfg.pretrain.world, runs_root)
    _, model = pretrain_model(cfg.pretrain, cfg.pretrain.sizes[0], runs_root, world)
    pre = report_stage(cfg.pretrain, runs_root)
    _say("2/5 theory")
    theory = theory_stage(cfg.theory, runs_root)
    sections = {"pretrain": pre, "theory": theory}
    if cfg.rebound:
        _say("3/5 rebound")
        sections["rebound"] = rebound.rebound_stage(rebound_config(cfg.rebound_preset, world, model), runs_root)
        sections["rates"] = rates_stage(RatesConfig(rebound=(str(sections["rebound"].path),),
                                                    labels=(cfg.pretrain.sizes[0],)), runs_root)
    if cfg.resistance:
        _say("4/5 resistance")
        sections["resistance"] = resistance.resistance_stage(
            resistance_config(cfg.resistance_preset, world, model), runs_root)

    def work(run: Run) -> None:
        lines = ["# elasticity demo", ""]
        if "rebound" in sections:
            reb = sections["rebound"]
            lines += ["## Rebound", "", *reb.lines("summary.txt"), ""]
            _copy(reb.path, run.path, _results(reb))
        if "rates" in sections:
            rates = sections["rates"]
            lines += ["## Theory meets experiment: the theorem's k", "", *rates.lines("summary.txt"), "",
                      rates.file("table.md").read_text()]
            (run.path / "rates").mkdir(exist_ok=True)
            _copy(rates.path, run.path / "rates", _results(rates))
        if "resistance" in sections:
            res = sections["resistance"]
            lines += ["## Resistance: forward vs inverse alignment", "", *res.lines("summary.txt"), "",
                      res.file("table.md").read_text(), res.file("difficulty.md").read_text()]
            (run.path / "resistance").mkdir(exist_ok=True)
            _copy(res.path, run.path / "resistance", sorted(
                p.name for p in res.path.glob("*") if p.suffix in (".png", ".csv", ".md")))
        lines += _pretrain_section(pre)
        lines += ["## Theory", "", *theory_lines(theory), ""]
        _copy(theory.path, run.path, [p.name for p in theory.path.glob("*.png")])
        _copy(pre.path, run.path, ["table.md", "table.json", "samples_report.json"])
        lines += ["## Runs", "", *[f"- {k}: `{v.path}`" for k, v in sections.items()], ""]
        run.write_text("summary.md", "\n".join(lines))
        run.write_json("summary.json", {k: str(v.path) for k, v in sections.items()})

    _say("5/5 report")
    report = run_stage(runs_root, "demo", cfg, sections, work, quiet=True)
    _say(f"done in {time.time() - started:.0f} s")
    return report


def run(cfg: Config, runs_root: Path) -> None:
    report = demo_stage(cfg, runs_root)
    print(report.file("summary.md").read_text())
    print(report.path)
