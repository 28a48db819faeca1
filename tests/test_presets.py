"""The paper's presets: every one plans offline and runs end to end on a tiny local model and real-schema data.

The presets are the files in configs/paper/ as shipped; the tests override only what must be local (models, data
sources, scorer models) and the sizes (grid, lengths, batches), never the data pipeline, the template or the
experiment. A fake Hugging Face cache stands in for the hub where revisions are tested.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from elasticity.cli import main
from elasticity.config import read_yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "paper").glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("one_thread")

REBOUND_SIZES = ["--data.prompts", "4", "--q1", "8", "--q2", "0", "4", "--seeds", "0", "--eval.pairs", "4",
                 "--eval.docs", "4", "--eval.batch_size", "8", "--policy.max_new_tokens", "8",
                 "--policy.samples_per_prompt", "1", "--policy.batch_size", "8", "--train.batch_size", "4",
                 "--train.grad_accum", "1", "--train.max_length", "96", "--train.bf16", "false",
                 "--scorer.batch_size", "8"]
RESISTANCE_SIZES = ["--data.prompts", "6", "--examples", "12", "--seeds", "0", "--eval.heldout_prompts", "2",
                    "--eval.loss_window", "1", "--eval.batch_size", "8", "--policy.max_new_tokens", "8",
                    "--policy.batch_size", "8"] + [x for s in ("align", "finetune") for x in (
                        f"--{s}.batch_size", "4", f"--{s}.grad_accum", "1", f"--{s}.max_length", "96",
                        f"--{s}.bf16", "false")]


def _local_flags(preset: Path, assets: dict, models: list[str]) -> list[str]:
    """What makes a preset run here: local models, the fixture of its dataset, a local scorer, tiny sizes."""
    tree = read_yaml(preset)
    flags = ["--config", str(preset), "--models", *models, "--data.source", str(assets[tree["data"]["dataset"]])]
    if tree["experiment"] == "rebound":
        scorer = assets["sentiment"] if tree["scorer"]["name"] == "classifier" else assets["cost"]
        return flags + ["--scorer.model", str(scorer), *REBOUND_SIZES]
    return flags + RESISTANCE_SIZES


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_plans_offline_as_shipped(preset, capsys):
    assert main(["plan", "--config", str(preset), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    tree = read_yaml(preset)
    assert plan["experiment"] == tree["experiment"] and plan["paper"]
    assert plan["data"]["dataset"] == tree["data"]["dataset"] and plan["data"]["available"].startswith("hub")
    assert len(plan["models"]) == len(tree["models"]) * max(1, len(tree.get("revisions", [])))
    for m in plan["models"]:
        assert m["available"].startswith("hub") and m["parameters"] > 0
        r = m["resources"]
        assert r["gpu_memory_gib"] > 0 and r["disk_gib"] > 0 and r["gpu_hours"] > 0
        assert m["stages"][0]["runs"] >= 1


def test_plan_counts_exactly_where_data_and_model_are_here(paper_assets, capsys):
    preset = ROOT / "configs" / "paper" / "rebound-imdb.yaml"
    assert main(["plan", *_local_flags(preset, paper_assets, [str(paper_assets["base"])]), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["data"]["pools"] == {"positive": 20, "negative": 20, "text": 16} and plan["data"]["prompts"] == 4
    (model,) = plan["models"]
    assert model["parameters_from"] == "config" and model["available"] == "local"
    positive = next(s for s in model["stages"] if s["stage"] == "rebound-positive")
    assert positive["exact"] and 8 * 10 < positive["training_tokens"] <= 8 * 96
    assert model["resources"]["activations_included"]
    assert main(["plan", *_local_flags(preset, paper_assets, [str(paper_assets["base"])])]) == 0
    text = capsys.readouterr().out
    assert "pools: positive 20, negative 20, text 16; 4 evaluation prompts" in text and "resolved config:" in text


def test_plan_counts_a_preference_perturbation_exactly(paper_assets, capsys):
    """DPO on the data's pairs: both sides' tokens counted exactly, and as much again for the reference pass."""
    from elasticity.data.tokenize import encode_pair
    from elasticity.models.hf import load_tokenizer

    preset = ROOT / "configs" / "paper" / "rebound-pku-dpo.yaml"
    assert main(["plan", *_local_flags(preset, paper_assets, [str(paper_assets["base"])]), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    negative = next(s for s in plan["models"][0]["stages"] if s["stage"] == "rebound-negative")
    assert negative["objective"] == "dpo" and negative["exact"]
    assert negative["reference_tokens"] == negative["training_tokens"] > 0
    tok = load_tokenizer(str(paper_assets["base"]))
    sft = next(s for s in plan["models"][0]["stages"] if s["stage"] == "rebound-positive")
    assert sft["objective"] == "sft" and "reference_tokens" not in sft
    assert negative["training_tokens"] >= 2 * 4 * len(encode_pair(tok, "", "", 96).input_ids)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("preset-runs")


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.stem != "pythia-suite"], ids=lambda p: p.stem)
def test_every_preset_runs_end_to_end_on_a_tiny_local_model(preset, paper_assets, runs, capsys):
    """From the raw dataset in its own schema to the experiment's tables, through the CLI, as a user runs it."""
    models = [str(paper_assets["base"])]
    if preset.stem.startswith("scaling"):
        models.append(str(paper_assets["base_copy"]))
    assert main(["run", "--runs-dir", str(runs), *_local_flags(preset, paper_assets, models)]) == 0
    suite = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(suite / "models.csv")))
    assert [r["model"] for r in rows] == models
    tree = read_yaml(preset)
    for r in rows:
        result = Path(r["result"])
        assert (result / "DONE").exists() and (result / "summary.txt").exists()
        assert len(r["weights_sha256"]) == 64
    if len(rows) == 2:  # a byte copy: the same weights, flagged
        assert rows[1]["same_weights_as"] == models[0] and "WARNING" in (suite / "summary.txt").read_text()
    data = next(runs.glob("data-*"))
    split = json.loads((next(d for d in runs.glob("data-*") if json.loads(
        (d / "split.json").read_text())["dataset"] == tree["data"]["dataset"]) / "split.json").read_text())
    assert split["template"] == tree["data"].get("template", split["template"]) and data.is_dir()
    meta = json.loads((Path(rows[0]["result"]) / "meta.json").read_text())
    assert meta["stage"] in ("rebound", "resistance")


def _fake_hub_cache(cache: Path, repo: str, revisions: dict[str, Path]) -> None:
    """A Hugging Face cache holding `repo` at the given revisions (name -> model folder), as the hub lays it out:
    refs/<revision> holds a commit, snapshots/<commit>/ the files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for i, (rev, source) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / rev).write_text(commit)
        shutil.copytree(source, folder / "snapshots" / commit)


def test_pythia_suite_crosses_sizes_and_revisions_and_flags_duplicates(paper_assets, runs, tmp_path, monkeypatch,
                                                                       capsys):
    """Two sizes x two step revisions from a (fake) hub cache: each revision loads at its own commit, the commit
    and the weights' hash go into models.csv and meta.json, and the two revisions of one size that hold the same
    weights are flagged."""
    import huggingface_hub.constants

    from elasticity.models.tiny import build_tiny_model

    cache = tmp_path / "hub"
    other = tmp_path / "other-weights"
    model = build_tiny_model("0.2m", 300, 160, seed=5)
    model.save_pretrained(other)
    for f in paper_assets["base"].glob("tokenizer*"):
        shutil.copy(f, other / f.name)
    shutil.copy(paper_assets["base"] / "special_tokens_map.json", other) if (
        paper_assets["base"] / "special_tokens_map.json").exists() else None
    _fake_hub_cache(cache, "tiny/pythia-a", {"step1": paper_assets["base"], "step2": other})
    _fake_hub_cache(cache, "tiny/pythia-b", {"step1": paper_assets["base"], "step2": paper_assets["base"]})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = ROOT / "configs" / "paper" / "pythia-suite.yaml"
    flags = _local_flags(preset, paper_assets, ["tiny/pythia-a", "tiny/pythia-b"])
    assert main(["run", "--runs-dir", str(runs), *flags, "--revisions", "step1", "step2",
                 "--tokens_per_step", "1000"]) == 0
    suite = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(suite / "models.csv")))
    assert [r["model"] for r in rows] == ["tiny/pythia-a@step1", "tiny/pythia-a@step2", "tiny/pythia-b@step1",
                                          "tiny/pythia-b@step2"]
    assert [r["commit"][-1] for r in rows] == ["1", "2", "1", "2"] and [r["tokens"] for r in rows] == \
        ["1000", "2000", "1000", "2000"]
    same = {r["model"]: r["same_weights_as"] for r in rows}
    assert same == {"tiny/pythia-a@step1": "", "tiny/pythia-a@step2": "", "tiny/pythia-b@step1": "tiny/pythia-a@step1",
                    "tiny/pythia-b@step2": "tiny/pythia-a@step1"}
    results = [Path(r["result"]) for r in rows]
    assert len(set(results)) == 4  # one experiment per revision: different commits, different stages
    # the suite's scaling report: parameters counted from the cached configs, tokens from the step revisions
    summary = (suite / "summary.txt").read_text()
    (scaling,) = [d for d in runs.glob("scaling-*") if str(d) in summary]
    trends = [json.loads(line) for line in (scaling / "trends.jsonl").read_text().splitlines()]
    assert {t["axis"] for t in trends} == {"volume"}  # both tiny "sizes" have the same parameter count
    assert {t["parameters"] > 0 and t["per"] == "decade of tokens" for t in trends} == {True}
    # and the theorem's ratio against k on real models: normalised by each base model, |D_p| from the revisions
    rates = Path((scaling / "summary.txt").read_text().split("Rates, ratio and Hooke tables: ")[1].split()[0])
    sizes = {m["model"]: m for m in csv.DictReader(open(rates / "models.csv"))}
    assert {m["pretrain_tokens"] for m in sizes.values()} == {"1000.0", "2000.0"}
    base = [r for r in csv.DictReader(open(rates / "rates.csv")) if r["q1"] == "0"]
    assert base and all(float(r["gamma_positive"]) == 0.0 for r in base)  # the base normaliser: 0 at the base
    assert (rates / "ratio.csv").read_text().count("\n") == 1 + 4 * len({r["q1"] for r in csv.DictReader(
        open(rates / "rates.csv")) if r["q1"] != "0"})
    base_meta = json.loads((next(runs.glob("rebound-base-*/meta.json"))).read_text())
    assert "models" in base_meta
    metas = [json.loads(p.read_text()) for p in runs.glob("rebound-base-*/meta.json")]
    commits = {m["models"]["base"].get("commit") for m in metas if "@" in m["models"]["base"]["source"]}
    assert commits == {f"{1:040x}", f"{2:040x}"}
    assert main(["plan", *flags, "--revisions", "step1", "step2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [m["commit"][-1] for m in plan["models"]] == ["1", "2", "1", "2"]
    assert all(m["available"] == "cached" and m["parameters_from"] == "config" for m in plan["models"])


def test_weights_in_the_hub_cache_are_named_by_their_blob_not_read(tmp_path):
    """The hub stores large files as blobs named by their sha256: a cached model's weights hash reads no weights
    (the blob here holds other bytes than its name says, so a read would give another hash)."""
    import hashlib
    import os

    from elasticity.hub import weights_hash

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    name = "ab" * 32
    (blobs / name).write_bytes(b"not what the name says")
    os.symlink(blobs / name, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    assert weights_hash(str(snapshot)) == hashlib.sha256(f"model.safetensors:{name}\n".encode()).hexdigest()


def test_the_chat_template_is_the_models_own(paper_assets, tmp_path):
    """`data.template chat` wraps every prompt in the first model's chat template (one user turn, the generation
    prompt added), without the BOS text the encoder adds again; the tokenizer is an input of the data stage."""
    from elasticity.config import load_config
    from elasticity.experiments.presets import ReboundPreset, data_stage
    from elasticity.models.hf import load_tokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(paper_assets["base"], model)
    tok = load_tokenizer(str(model))
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok.save_pretrained(model)
    cfg = load_config(ReboundPreset, ROOT / "configs" / "paper" / "rebound-beavertails.yaml",
                      {"models": [{"model": str(model)}], "data.source": str(paper_assets["beavertails"]),
                       "data.template": "chat", "data.prompts": 4})
    run = data_stage(cfg, tmp_path / "runs")
    prompts = [json.loads(line)["prompt"] for line in open(run.file("prompts.jsonl"))]
    assert all(p.startswith("<|user|>how do i ") and p.endswith("?<|assistant|>") for p in prompts)
    assert json.loads(run.file("split.json").read_text())["template"] == "chat"
    assert "tokenizer" in (run.file("config.yaml").read_text())


def test_table3_is_read_from_the_runs_of_figure_4(paper_assets, runs, capsys):
    """The Table 3 preset differs from Figure 4's only in its description: one set of runs serves both."""
    paths = []
    for name in ("rebound-beavertails", "table3-kl-beavertails"):
        preset = ROOT / "configs" / "paper" / f"{name}.yaml"
        assert main(["run", "--runs-dir", str(runs), *_local_flags(preset, paper_assets,
                                                                   [str(paper_assets["base"])])]) == 0
        paths.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert paths[0] == paths[1]
