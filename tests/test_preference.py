"""The preference objectives equal TRL's losses on a tiny model and a fixed batch, and keep the loop's invariances.

TRL tokenises the batch and computes its loss with its own trainer (`compute_loss`, reference model beside the
policy); ours reads the same token ids, caches the reference's log-probabilities once, then runs the policy.
"""

from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
import torch

from elasticity.data.batching import Step
from elasticity.data.tokenize import IGNORE, Example
from elasticity.models.tiny import build_tiny_model, train_tokenizer
from elasticity.runs import Run
from elasticity.train.loop import Objective, TrainConfig, train
from elasticity.train.preference import Pair, PreferenceConfig, PreferenceLoss

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = "the movie was good bad great awful plot actor scene film i liked hated it and but very".split()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """A TRL trainer leaves accelerate's process-wide state set up its way, and our loop's numbers then move in
    the 5th digit; every test here, and every test after this module, starts from a clean state."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def assets():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) for _ in range(200)]
    tok = train_tokenizer(texts, 300)
    rows = [{"prompt": " ".join(t.split()[:3]), "chosen": " " + " ".join(t.split()[3:9]),
             "rejected": " " + " ".join(t.split()[9:9 + rng.randint(2, 8)])} for t in texts[:6]]
    return tok, rows


@pytest.fixture
def world(assets):
    """Fresh models for every test: a TRL trainer changes the model it wraps (its fused head)."""
    tok, rows = assets
    return tok, rows, build_tiny_model("0.2m", len(tok), 64, seed=0), build_tiny_model("0.2m", len(tok), 64, seed=1)


def _examples(batch) -> list[Example]:
    """TRL's right-padded rows back to our examples: the completion tokens are the targets."""
    out = []
    for ids, mask, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        n = int(mask.sum())
        ids, comp = ids[:n].tolist(), comp[:n].tolist()
        out.append(Example(ids, [t if c else IGNORE for t, c in zip(ids, comp)]))
    return out


def _trl(trainer_cls, config_cls, rows, tok, policy, reference, **kwargs):
    from datasets import Dataset

    args = config_cls(output_dir="unused", per_device_train_batch_size=len(rows), report_to=[], use_cpu=True,
                      max_length=64, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    return float(trainer.compute_loss(trainer.model, batch)), batch


def _ours(algorithm, pairs, reference, policy, tmp_path, cfg=PreferenceConfig()):
    objective = PreferenceLoss(algorithm, cfg)
    step = Step([list(range(len(pairs)))], sum(p.n_targets for p in pairs))
    run = Run(tmp_path)
    objective.setup(reference, pairs, [step], 0, torch.device("cpu"), run, 4, True)
    objective.begin_step(policy, pairs, step, 0, 0, torch.device("cpu"), 4)
    loss, logged, _ = objective.micro(Objective(policy), pairs, list(range(len(pairs))), 0, torch.device("cpu"))
    assert float(logged) == pytest.approx(float(loss), rel=1e-6)  # the float64 sum of the same terms
    return float(loss) / step.n_targets, objective


@pytest.mark.parametrize("algorithm,loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trl(world, tmp_path, algorithm, loss_type):
    from trl import DPOConfig, DPOTrainer

    tok, rows, reference, policy = world
    expected, batch = _trl(DPOTrainer, DPOConfig, rows, tok, policy, reference, beta=0.1, loss_type=[loss_type])
    examples = _examples(batch)
    n = len(rows)
    pairs = [Pair(examples[i], examples[n + i]) for i in range(n)]
    ours, objective = _ours(algorithm, pairs, reference, policy, tmp_path)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32: IPO is ~25, an ulp is 2e-6
    assert objective.ref["chosen"].shape == (n,)  # cached once; the reference never runs again
    assert (tmp_path / "reference_logps.pt").is_file()
    assert abs(expected - (0.6931 if algorithm == "dpo" else 25.0)) > 1e-3  # policy != reference: a real test


def test_simpo_equals_trl_cpo(world, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, rows, reference, policy = world
    args = dict(beta=2.0, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.5)
    from datasets import Dataset

    config = CPOConfig(output_dir="unused", per_device_train_batch_size=len(rows), report_to=[], use_cpu=True,
                       max_length=64, **args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(model=policy, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    expected = float(trainer.compute_loss(trainer.model, batch))

    pairs = []
    for i in range(len(rows)):
        ex = []
        for name in ("chosen", "rejected"):
            mask = batch[f"{name}_attention_mask"][i].bool()
            ids = batch[f"{name}_input_ids"][i][mask].tolist()
            labels = batch[f"{name}_labels"][i][mask].tolist()
            ex.append(Example(ids, labels))
        pairs.append(Pair(*ex))
    ours, _ = _ours("simpo", pairs, reference, policy, tmp_path, PreferenceConfig(beta=2.0, gamma=0.5))
    assert ours == pytest.approx(expected, abs=1e-6)


def test_kto_equals_trl(world, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    tok, rows, policy, reference = world  # this way round the KL estimate is above 0: its rotation counts
    n = len(rows)
    unpaired = ([{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows] +
                [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows])
    config = KTOConfig(output_dir="unused", per_device_train_batch_size=2 * n, report_to=[], use_cpu=True,
                       max_length=64, beta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = KTOTrainer(model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(unpaired),
                             processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    expected = float(trainer.compute_loss(trainer.model, batch))
    examples = _examples(batch)
    pairs = [Pair(examples[i], examples[n + i], terms=2) for i in range(n)]
    ours, objective = _ours("kto", pairs, reference, policy, tmp_path)
    assert ours == pytest.approx(expected, abs=1e-6)
    assert float(objective._z) > 0  # the KL term is live, so its rotation is tested too


def test_preference_training_keeps_the_loops_invariances(world, tmp_path):
    """Grad accumulation equals one big batch, and a run cut at a pair count is a prefix of a longer one."""
    tok, _, _, _ = world
    from elasticity.train.preference import make_pairs

    rng = random.Random(3)
    records = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(3)),
                "chosen": " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))),
                "rejected": " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))} for _ in range(24)]

    def run(name, algorithm, n=24, **kw):
        pairs = make_pairs(records[:n], tok, 64, algorithm)
        cfg = dataclasses.replace(TrainConfig(lr=3e-3, batch_size=4, max_length=64, shuffle=False, seed=0), **kw)
        model = build_tiny_model("0.2m", len(tok), 64, seed=0)
        r = Run(tmp_path / name)
        r.path.mkdir()
        summary = train(model, tok, pairs, cfg, r, progress_bar=False, save_final=False,
                        objective=PreferenceLoss(algorithm))
        return model, {**summary, "grad_norms": [m["train/grad_norm"] for m in r.metrics() if "train/grad_norm" in m]}

    for algorithm in ("dpo", "kto"):
        big, s_big = run(f"{algorithm}-big", algorithm, batch_size=8)
        small, s_small = run(f"{algorithm}-small", algorithm, batch_size=2, grad_accum=4)
        assert s_big["steps"] == s_small["steps"] == 3 and s_big["examples"] == 24
        assert s_big["final_train_loss"] == pytest.approx(s_small["final_train_loss"], rel=1e-5)
        assert s_big["grad_norms"] == pytest.approx(s_small["grad_norms"], rel=1e-5)  # the same gradient's scale
        # AdamW moves a coordinate whose gradient is near zero by up to lr whatever its rounding: the weights agree
        # to a few hundredths of lr (9e-5 here at lr 3e-3 on an AVX-512 CPU, under 2e-5 on an AVX2 one)
        for p, q in zip(big.parameters(), small.parameters()):
            assert torch.allclose(p, q, atol=3e-4, rtol=0), (algorithm, float((p - q).abs().max()))
    prefix, _ = run("prefix", "dpo", n=8, batch_size=8)
    longer, _ = run("longer", "dpo", batch_size=8, checkpoint_examples=(8,))
    cut = build_tiny_model("0.2m", len(tok), 64, seed=0)
    from safetensors.torch import load_file

    cut.load_state_dict(load_file(tmp_path / "longer" / "checkpoints" / "examples-8" / "model.safetensors"),
                        strict=False)
    for p, q in zip(prefix.parameters(), cut.parameters()):
        assert torch.equal(p, q)
