"""The catalogue of bad input: every case ends in exactly one line `elasticity: error: ...` on stderr, exit
code 2, and nothing left on disk (the whole test folder is the same before and after)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from elasticity.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tiny_assets, paper_assets, tmp_path_factory) -> dict[str, Path]:
    """Models and data files, good and bad, built once."""
    from elasticity.models.hf import load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("bad")
    tok = load_tokenizer(str(tiny_assets["tok"]))
    model = build_tiny_model("0.2m", len(tok), 64, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    small = build_tiny_model("0.2m", 50, 64, seed=0)  # an embedding of 50 rows with a 300-token tokenizer
    small.save_pretrained(root / "small-embedding")
    tok.save_pretrained(root / "small-embedding")
    short = build_tiny_model("0.2m", len(tok), 16, seed=0)  # a 16-token context
    short.save_pretrained(root / "short-context")
    tok.save_pretrained(root / "short-context")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=24,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    gpt2.save_pretrained(root / "learned-positions")  # a table of 24 positions
    tok.save_pretrained(root / "learned-positions")
    (root / "orphan-adapter").mkdir()  # a LoRA adapter whose base model is not there
    (root / "orphan-adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(root / "gone"), "peft_type": "LORA", "r": 4}))
    tok.save_pretrained(root / "orphan-adapter")
    rng = random.Random(0)
    words = "the movie was good bad plot actor scene film it".split()
    pairs = [{"prompt": " ".join(rng.choice(words) for _ in range(4)),
              "response": " " + " ".join(rng.choice(words) for _ in range(6))} for _ in range(40)]

    def jsonl(name, records):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        return root / name

    out = {"root": root, "model": root / "model", "small_embedding": root / "small-embedding",
           "short_context": root / "short-context", "learned_positions": root / "learned-positions",
           "orphan_adapter": root / "orphan-adapter",
           "tok": tiny_assets["tok"], "sft": tiny_assets["sft"],
           "text": tiny_assets["text"], "pairs": jsonl("pairs.jsonl", pairs),
           "prompts": jsonl("prompts.jsonl", [{"prompt": p["prompt"]} for p in pairs[:12]]),
           "long_prompt": jsonl("long.jsonl", [{"prompt": " ".join(["the movie was good"] * 20)}])}
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.jsonl").write_bytes('{"text": "un caf\xe9"}\n'.encode("latin-1"))
    (root / "data.parquet").write_bytes(b"PAR1" + bytes(64))
    (root / "data.csv").write_text("question,answer\na,b\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "latin1.yaml").write_bytes("data: caf\xe9\n".encode("latin-1"))
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "bad.yaml").write_text("train: {lr: [\n")
    (root / "a-file").write_text("not a folder\n")
    (root / "dpo.yaml").write_text("experiment: dpo\n")
    (root / "circle-a.yaml").write_text("extends: circle-b.yaml\n")
    (root / "circle-b.yaml").write_text("extends: circle-a.yaml\n")
    out["paper"] = paper_assets
    return out


def _train(f, *flags, data=None, runs="runs"):
    return ["train", "--runs-dir", runs, "--model.size", "0.2m", "--model.tokenizer", str(f["tok"]), "--data",
            str(data or f["sft"]), "--train.max_steps", "2", "--train.max_length", "64", *flags]


def _rebound(f, *flags):
    return ["rebound", "--runs-dir", "runs", "--model", str(f["model"]), "--positive", str(f["pairs"]),
            "--negative", str(f["pairs"]), "--prompts", str(f["prompts"]), "--scorer.name", "vader", "--q1", "8",
            "--q2", "0", "4", "--eval.pairs", "4", "--eval.prompts", "2", "--train.max_length", "64",
            "--policy.max_new_tokens", "4", *flags]


def _plan(*flags, preset="rebound-imdb.yaml"):
    return ["plan", "--config", str(ROOT / "configs" / "paper" / preset), *flags]


def _resistance(f, *flags):
    return ["resistance", "--runs-dir", "runs", "--model", str(f["model"]), "--alignment", str(f["pairs"]),
            "--prompts", str(f["prompts"]), "--align.batch_size", "4", "--finetune.batch_size", "4",
            "--eval.heldout_prompts", "4", "--policy.max_new_tokens", "4", *flags]


def _preset(f, *flags, name="rebound-imdb", command="run"):
    paper = f["paper"]
    return [command, "--runs-dir", "runs", "--config", str(ROOT / "configs" / "paper" / f"{name}.yaml"),
            "--models", str(paper["base"]), "--data.source", str(paper["imdb"]), "--scorer.model",
            str(paper["sentiment"]), "--data.prompts", "4", "--q1", "8", "--q2", "0", "4", "--seeds", "0",
            "--eval.pairs", "4", "--train.max_length", "96", "--train.bf16", "false", "--policy.max_new_tokens", "4",
            *flags]


def _pretrain(*flags):
    return ["pretrain", "--runs-dir", "runs", "--config", str(ROOT / "configs" / "pretrain-tiny.yaml"), *flags]


CASES = {
    # presets and raw datasets
    "preset split missing": (lambda f: _preset(f, "--data.split", "validation"), "has no split 'validation'"),
    "preset filter selects nothing": (lambda f: _preset(f, "--data.filters", "label=7"),
                                      "label=7 selects none of the records"),
    "preset template without input": (lambda f: _preset(f, "--data.template", "Q: A:"), "has no {input}"),
    "preset adapter field missing": (lambda f: _preset(f, "--data.dataset", "alpaca", "--data.split", "train"),
                                     "no field 'instruction' that the alpaca adapter reads"),
    "preset unknown dataset": (lambda f: _preset(f, "--data.dataset", "imbd"), "unknown dataset 'imbd'"),
    "preset data and a file": (lambda f: _preset(f, "--positive", str(f["pairs"])), "set either data.dataset or"),
    "preset unknown experiment": (lambda f: ["run", "--config", str(f["root"] / "dpo.yaml")],
                                  "experiment must be one of"),
    "preset extends in a circle": (lambda f: ["run", "--config", str(f["root"] / "circle-a.yaml")],
                                   "goes round in a circle"),
    "preset model missing": (lambda f: _preset(f, "--models", str(f["paper"]["base"]), "nobody/nothing@step1"),
                             "model 'nobody/nothing@step1' is not a local folder"),
    "preset asks for more than the data holds": (lambda f: _preset(f, "--q1", "30"), "q1 asks for 30 positive"),
    "plan split missing": (lambda f: _preset(f, "--data.heldout_split", "dev", command="plan"),
                           "has no split 'dev'"),
    "plan filter selects nothing": (lambda f: _preset(f, "--data.filters", "label=7", command="plan"),
                                    "selects none"),
    # data files
    "binary data file": (lambda f: _train(f, data=f["root"] / "binary.jsonl"), "is not UTF-8 text"),
    "non-UTF-8 data file": (lambda f: _train(f, data=f["root"] / "latin1.jsonl"), "is not UTF-8 text"),
    "parquet file that is not parquet": (lambda f: _train(f, data=f["root"] / "data.parquet"),
                                         "not a readable parquet file"),
    "csv file without the fields": (lambda f: _train(f, data=f["root"] / "data.csv"), "has no field 'prompt'"),
    "data folder without the split": (lambda f: _train(f, data=f["root"]), "no split 'train'"),
    "unsupported data file": (lambda f: _train(f, data=f["root"] / "bad.yaml"), "unsupported data file type"),
    "missing data file": (lambda f: _train(f, data=f["root"] / "none.jsonl"), "data file not found"),
    "record without the field": (lambda f: _train(f, "--kind", "text", data=f["pairs"]), "has no field 'text'"),
    "unknown kind": (lambda f: _train(f, "--kind", "dpo"), "kind must be 'sft' or 'text'"),
    # config files
    "binary config file": (lambda f: ["train", "--config", str(f["root"] / "binary.yaml")], "is not UTF-8 text"),
    "non-UTF-8 config": (lambda f: ["train", "--config", str(f["root"] / "latin1.yaml")], "is not UTF-8 text"),
    "config not a mapping": (lambda f: ["train", "--config", str(f["root"] / "list.yaml")], "must hold a mapping"),
    "config not YAML": (lambda f: ["train", "--config", str(f["root"] / "bad.yaml")], "not valid YAML"),
    "config file missing": (lambda f: ["train", "--config", str(f["root"] / "none.yaml")], "config file not found"),
    "unknown flag": (lambda f: _train(f, "--train.lrr", "1"), "unknown config key 'train.lrr'"),
    "wrong type": (lambda f: _train(f, "--train.lr", "fast"), "--train.lr must be a number"),
    # the runs directory
    "runs directory is a file": (lambda f: _train(f, runs=str(f["root"] / "a-file")), "a file stands where"),
    "runs directory under a file": (lambda f: _train(f, runs=str(f["root"] / "a-file" / "runs")),
                                    "a file stands where"),
    "runs directory cannot be written": (lambda f: _train(f, runs="/sys/elasticity-runs"), "cannot be written"),
    # numbers out of range
    "batch size 0": (lambda f: _train(f, "--train.batch_size", "0"), "train.batch_size must be >= 1"),
    "batch size -1": (lambda f: _train(f, "--train.batch_size", "-1"), "train.batch_size must be >= 1"),
    "grad accumulation 0": (lambda f: _train(f, "--train.grad_accum", "0"), "train.grad_accum must be >= 1"),
    "learning rate 0": (lambda f: _train(f, "--train.lr", "0"), "train.lr must be a number > 0"),
    "negative learning rate": (lambda f: _train(f, "--train.lr", "-0.1"), "train.lr must be a number > 0"),
    "max length 0": (lambda f: _train(f, "--train.max_length", "0"), "train.max_length must be >= 2"),
    "max steps 0": (lambda f: _train(f, "--train.max_steps", "0"), "train.max_steps must be >= 1"),
    "epochs 0": (lambda f: _train(f, "--train.epochs", "0"), "train.epochs must be >= 1"),
    "negative warm-up": (lambda f: _train(f, "--train.warmup_steps", "-1"), "train.warmup_steps must be >= 0"),
    "checkpoint step 0": (lambda f: _train(f, "--train.checkpoint_steps", "0"), "train.checkpoint_steps"),
    "repeated checkpoint steps": (lambda f: _train(f, "--train.checkpoint_steps", "1", "1"), "repeats"),
    "checkpoint past the last step": (lambda f: _train(f, "--train.checkpoint_steps", "9"), "past the last step"),
    "repeated token checkpoints": (lambda f: _train(f, "--train.checkpoint_tokens", "5", "5"), "repeats"),
    "evaluation batch 0": (lambda f: _train(f, "--train.eval_batch_size", "0"), "train.eval_batch_size"),
    "log every 0 steps": (lambda f: _train(f, "--train.log_every", "0"), "train.log_every must be >= 1"),
    "gradient clip 0": (lambda f: _train(f, "--train.max_grad_norm", "0"), "train.max_grad_norm must be > 0"),
    "negative LoRA rank": (lambda f: _train(f, "--model.lora_r", "-1"), "model.lora_r must be >= 0"),
    "LoRA on a preset built from scratch": (lambda f: _train(f, "--model.lora_r", "4"),
                                            "model.lora_r trains adapters on an existing model"),
    "rebound float16 weights": (lambda f: _rebound(f, "--dtype", "float16"), "dtype must be one of float32, bfloat16"),
    "rebound unknown optimizer": (lambda f: _rebound(f, "--train.optimizer", "sgd"), "--train.optimizer must be one of 'adamw', 'adamw8bit'"),
    "rebound no measuring tokens": (lambda f: _rebound(f, "--eval.batch_tokens", "0"), "eval.batch_tokens must be"),
    "rebound packs dpo pairs": (lambda f: _rebound(f, "--align", "dpo", "--train.pack_tokens", "64"),
                                "train.pack_tokens packs next-token (sft) examples only, and --align is dpo"),
    "pack tokens under max length": (lambda f: _train(f, "--train.pack_tokens", "32"),
                                     "train.pack_tokens must be 0 (padded micro-batches) or at least max_length (64)"),
    "rebound negative LoRA rank": (lambda f: _rebound(f, "--lora.r", "-1"), "lora.r must be >= 0 (0 = train every"),
    "rebound LoRA alpha 0": (lambda f: _rebound(f, "--lora.r", "4", "--lora.alpha", "0"), "lora.alpha must be > 0"),
    "rebound LoRA targets matching nothing": (lambda f: _rebound(f, "--lora.r", "4", "--lora.targets", "q_proj"),
                                              "lora.targets 'q_proj': Target modules q_proj not found"),
    "resistance LoRA dropout 1": (lambda f: _resistance(f, "--lora.r", "4", "--lora.dropout", "1"),
                                  "lora.dropout must be in [0, 1)"),
    "resistance LoRA targets no regex": (lambda f: _resistance(f, "--lora.r", "4", "--lora.targets", "(q"),
                                         "lora.targets '(q' is not a regular expression"),
    "adapter whose base is gone": (lambda f: _rebound(f, "--model", str(f["orphan_adapter"])),
                                   "orphan-adapter applies to"),
    "LoRA alpha 0": (lambda f: _train(f, "--model.lora_r", "4", "--model.lora_alpha", "0"), "model.lora_alpha"),
    # models
    "tokenizer larger than the embedding": (
        lambda f: ["train", "--runs-dir", "runs", "--model.path", str(f["small_embedding"]), "--data",
                   str(f["sft"]), "--train.max_steps", "1"], "tokens but the model's embedding has 50 rows"),
    "hub model offline": (lambda f: ["compress", "--runs-dir", "runs", "--model", "some-org/some-model",
                                     "--data", str(f["text"])], "some-org/some-model"),
    "missing model folder": (lambda f: ["compress", "--runs-dir", "runs", "--model", str(f["root"] / "nope"),
                                        "--data", str(f["text"])], "model path does not exist"),
    # pre-training
    "token checkpoint past the budget": (lambda f: _pretrain("--checkpoint_tokens", "4000", "999999"),
                                         "past the pre-training budget"),
    "repeated token checkpoint": (lambda f: _pretrain("--checkpoint_tokens", "4000", "4000"), "repeats"),
    "negative token budget": (lambda f: _pretrain("--tokens", "-5"), "tokens must be >= 0"),
    "no held-out documents": (lambda f: _pretrain("--heldout_docs", "0"), "heldout_docs must be >= 1"),
    # rebound
    "no held-out pairs": (lambda f: _rebound(f, "--eval.pairs", "0"), "eval.pairs"),
    "no held-out documents (rebound)": (lambda f: _rebound(f, "--heldout", str(f["text"]), "--eval.docs", "0"),
                                        "eval.docs"),
    "max length shorter than a prompt": (lambda f: _rebound(f, "--train.max_length", "3"),
                                         "is shorter than the longest prompt"),
    "negative Q1": (lambda f: _rebound(f, "--q1", "-8"), "q1 values must be positive"),
    "KL epsilon 0": (lambda f: _rebound(f, "--metrics.kl_epsilon", "0"), "metrics.kl_epsilon must be > 0"),
    "rebound batch size 0": (lambda f: _rebound(f, "--train.batch_size", "0"), "train.batch_size must be >= 1"),
    # resistance
    "no held-out prompts": (lambda f: _resistance(f, "--eval.heldout_prompts", "0"), "eval.heldout_prompts"),
    "loss window 0": (lambda f: _resistance(f, "--eval.loss_window", "0"), "eval.loss_window"),
    "one slice": (lambda f: _resistance(f, "--slices", "1"), "slices must be >= 2"),
    # generation and decoding
    "prompt longer than the context": (
        lambda f: ["generate", "--runs-dir", "runs", "--model", str(f["short_context"]), "--prompts",
                   str(f["long_prompt"])], "longer than the model's context"),
    "generation past learned positions": (
        lambda f: ["generate", "--runs-dir", "runs", "--model", str(f["learned_positions"]), "--prompts",
                   str(f["prompts"]), "--policy.max_new_tokens", "40"], "a table of learned positions"),
    "no new tokens": (lambda f: ["generate", "--runs-dir", "runs", "--model", str(f["model"]), "--prompts",
                                 str(f["prompts"]), "--policy.max_new_tokens", "0"], "max_new_tokens >= 1"),
    # theory and the world
    "alphabet of one token": (lambda f: ["theory", "--runs-dir", "runs", "--tree.alphabet_size", "1"],
                              "tree.alphabet_size must be >= 2"),
    "negative mixture weight": (lambda f: ["world", "--runs-dir", "runs", "--mixture.neutral", "-1"],
                                "must be a non-negative number"),
    "no SFT records": (lambda f: ["world", "--runs-dir", "runs", "--sizes.sft_positive", "0"],
                       "sizes.sft_positive must be >= 1"),
    # rates
    "rates of a folder that is no rebound": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", str(f["root"])],
                                             "is not a finished rebound run directory"),
    "rates unknown normaliser": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", "r", "--normaliser", "kl"],
                                 "normaliser must be one of entropy, base, reference"),
    "rates span 0": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", "r", "--span", "0"],
                     "span must be >= 1"),
    "rates labels for other rebounds": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", "a", "b", "--labels",
                                                   "x"], "labels: 1 values for 2 rebounds"),
    "rates one label twice": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", "a", "b", "--labels", "x", "x"],
                              "'x' is given twice"),
    "rates reference without a rate": (lambda f: ["rates", "--runs-dir", "runs", "--rebound", "r", "--normaliser",
                                                  "reference", "--reference", "positive"], "is not SET=BITS"),
    # plan
    "plan sharded dpo step": (lambda f: _plan("--fsdp", "2", "--perturb", "dpo"),
                              "fsdp: FSDP shards sft steps only, and this preset has a dpo step"),
    "plan sharded LoRA": (lambda f: _plan("--fsdp", "2", "--lora.r", "4"), "fsdp: LoRA with FSDP is not supported"),
    "plan negative shards": (lambda f: _plan("--fsdp", "-1"), "fsdp must be >= 0"),
    "plan sharded resistance": (lambda f: _plan("--fsdp", "2", preset="resistance-alpaca.yaml"),
                                "fsdp: resistance runs in one process"),
    "plan ZeRO-3 with a dpo step": (lambda f: _plan("--zero3", "2", "--perturb", "dpo"),
                                    "zero3: DeepSpeed ZeRO-3 shards sft steps only, and this preset has a dpo step"),
    "plan sharded twice": (lambda f: _plan("--zero3", "2", "--fsdp", "2"),
                           "fsdp and zero3 are two ways to shard one run: give one of them"),
    # compress
    "compress batch 0": (lambda f: ["compress", "--runs-dir", "runs", "--model", str(f["model"]), "--data",
                                    str(f["text"]), "--batch_size", "0"], "batch_size must be at least 1"),
}


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, files, tmp_path, monkeypatch, capsys):
    argv, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    _assert_refused(argv(files), message, files, tmp_path, capsys)


def _assert_refused(args: list[str], message: str, files, tmp_path, capsys) -> None:
    before, fixtures = _tree(tmp_path), _tree(files["root"])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elasticity: error: "), err
    assert message in err[0], err[0]
    assert _tree(tmp_path) == before and _tree(files["root"]) == fixtures  # nothing written anywhere


FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
# launches refused before anything is written: the environment accelerate launch gives each process
LAUNCH_CASES = {
    "DeepSpeed ZeRO-2": ({**ZERO3, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, lambda f: _rebound(f),
                         "DeepSpeed ZeRO stage 2 is not supported: set zero_stage: 3"),
    "DeepSpeed offloading": ({**ZERO3, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, lambda f: _train(f),
                             "DeepSpeed offloading is not supported (offload_optimizer_device is cpu)"),
    "DeepSpeed config file": ({**ZERO3, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, lambda f: _rebound(f),
                              "a deepspeed_config_file is not read"),
    "ZeRO-3 with a simpo step": (ZERO3, lambda f: _rebound(f, "--align", "simpo"),
                                 "DeepSpeed ZeRO-3 shards sft steps only, and this run has a simpo step"),
    "ZeRO-3 with LoRA": (ZERO3, lambda f: _rebound(f, "--lora.r", "4"),
                         "LoRA with DeepSpeed ZeRO-3 is not supported"),
    "FSDP1": ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, lambda f: _train(f), "FSDP1 is not supported"),
    "FSDP with a dpo step": (FSDP2, lambda f: _rebound(f, "--perturb", "dpo"),
                             "FSDP shards sft steps only, and this run has a dpo step"),
    "FSDP with LoRA (rebound)": (FSDP2, lambda f: _rebound(f, "--lora.r", "4"), "LoRA with FSDP is not supported"),
    "FSDP with LoRA (train)": (FSDP2, lambda f: ["train", "--runs-dir", "runs", "--model.path", str(f["model"]),
                                                 "--model.lora_r", "4", "--data", str(f["sft"])],
                               "LoRA with FSDP is not supported"),
}


@pytest.mark.parametrize("case", sorted(LAUNCH_CASES))
def test_a_launch_this_toolkit_does_not_run_is_one_line_exit_2(case, files, tmp_path, monkeypatch, capsys):
    env, argv, message = LAUNCH_CASES[case]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    _assert_refused(argv(files), message, files, tmp_path, capsys)


def test_the_catalogue_is_large():
    assert len(CASES) >= 40
