"""`lazyllm.calibrate`: refusals before any work, the search logic, the report, save/load."""

import json

import pytest
import torch
from conftest import random_ids, tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel

import lazyllm
import lazyllm.calibration as calibration
from lazyllm.calibration import ladder
from lazyllm.generation import encode, greedy


class Tokenizer:
    """Just enough of a tokenizer: text is already a list of token ids written as numbers."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = torch.tensor([[int(token) for token in text.split()]])
        return type("Encoding", (), {"input_ids": ids})()


def prompts(n, length=120):
    return [random_ids(length, seed=seed)[0] for seed in range(n)]


def faithful_above(threshold, monkeypatch):
    """Answers agree with the baseline exactly when the candidate's prefill token fraction is >= threshold."""
    calls = []

    def answer(self, ids, config):
        calls.append(config)
        if config is None:
            return "reference"
        return "reference" if config.prefill_fraction(self.num_layers) >= threshold else "other"

    monkeypatch.setattr(calibration.Search, "answer", answer)
    return calls


def test_the_cheapest_faithful_schedule_is_found_and_failures_stop_early(monkeypatch):
    model = tiny_llama("xgen")  # 32 layers: a ladder with distinct fractions
    calls = faithful_above(0.6, monkeypatch)
    config = lazyllm.calibrate(model, Tokenizer(), prompts(16), min_agreement=0.8, min_prompt_tokens=0, progress=False)
    tried = config.report["trials"]
    passing = [t for t in tried if t["fraction"] >= 0.6]
    assert config.prefill_fraction(32) == min(t["fraction"] for t in passing) >= 0.6
    assert all(t["answered"] == 1 and t["stopped_early"] for t in tried if t["fraction"] < 0.6), "no miss allowed of 16"
    assert len(calls) < 16 * (1 + len(tried)), "early stops save answers"
    coarse = {
        c.describe(): c.prefill_fraction(32) for c in ladder(32, calibration.COARSE_KEEPS, calibration.COARSE_DEPTHS)
    }
    coarse_best = min(f for f in coarse.values() if f >= 0.6)
    fine = [t for t in tried if t["schedule"] not in coarse]
    assert fine and all(t["fraction"] < coarse_best for t in fine), "neighbours dearer than a pass are not tried"
    assert config.report["ttft_ratio"] > 0 and "agreement" in config.summary()


def test_a_lucky_schedule_is_not_chosen_on_its_point_estimate(monkeypatch):
    """Schedules just below the faithful ones miss 1 answer of 16 (0.94 > 0.8): their lower bound, 0.72, fails."""
    ids = prompts(16)
    lucky = tuple(ids[5].tolist())

    def answer(self, x, config):
        fraction = 1.0 if config is None else config.prefill_fraction(self.num_layers)
        return "reference" if fraction >= 0.6 or (fraction >= 0.4 and tuple(x[0].tolist()) != lucky) else "other"

    monkeypatch.setattr(calibration.Search, "answer", answer)
    config = lazyllm.calibrate(tiny_llama("xgen"), Tokenizer(), ids, min_prompt_tokens=0, progress=False)
    assert config.prefill_fraction(32) >= 0.6
    assert any(0.4 <= t["fraction"] < 0.6 for t in config.report["trials"]), "a lucky schedule was tried"


def test_misses_allowed_keep_the_lower_bound_at_the_target():
    assert calibration.misses_allowed(16, 0.8) == 0 and calibration.misses_allowed(24, 0.79) == 1
    assert calibration.misses_allowed(35, 0.9) == 0 and calibration.misses_allowed(34, 0.9) == -1


def test_a_candidate_answers_first_the_prompts_earlier_candidates_missed(monkeypatch):
    """Cheap schedules miss only the last 3 of 24 prompts; 1 miss allowed: after the first failure, the next ones
    fail on their 2nd answer."""
    ids = prompts(24)
    hard = {tuple(x.tolist()) for x in ids[21:]}

    def answer(self, x, config):
        easy = config is None or config.prefill_fraction(self.num_layers) >= 0.6 or tuple(x[0].tolist()) not in hard
        return "reference" if easy else "other"

    monkeypatch.setattr(calibration.Search, "answer", answer)
    config = lazyllm.calibrate(
        tiny_llama("xgen"), Tokenizer(), ids, min_agreement=0.79, min_prompt_tokens=0, progress=False
    )
    failed = [t for t in config.report["trials"] if t["stopped_early"]]
    assert len(failed) >= 2 and failed[0]["answered"] == 23, "the first failure meets the hard prompts last"
    assert all(t["answered"] == 2 for t in failed[1:]), "later failures meet them first"


def test_speed_target_returns_the_most_faithful_schedule_fast_enough(monkeypatch):
    model = tiny_llama("xgen")
    faithful_above(0.45, monkeypatch)
    config = lazyllm.calibrate(
        model, Tokenizer(), prompts(10), target="speed", speedup=2.0, min_prompt_tokens=0, progress=False
    )
    assert config.prefill_fraction(32) <= 0.5
    best = max(t["agreed"] for t in config.report["trials"])
    assert best == 10 and config.prefill_fraction(32) >= 0.45


def test_no_schedule_meets_the_target_returns_no_pruning(monkeypatch):
    faithful_above(2.0, monkeypatch)  # nothing agrees
    config = lazyllm.calibrate(tiny_llama("gqa"), Tokenizer(), prompts(16), min_prompt_tokens=0, progress=False)
    assert config.prune_layers == () and "none met the target" in config.summary()


def test_end_to_end_on_a_tiny_model_patches_and_reports():
    model = tiny_llama("gqa")
    config = lazyllm.calibrate(
        model, Tokenizer(), prompts(16), min_agreement=0.8, max_new_tokens=4, min_prompt_tokens=0, progress=False
    )
    assert isinstance(config, lazyllm.LazyConfig) and config.report["prompts"] == 16
    lazyllm.patch(model, config)
    with torch.inference_mode():
        model.generate(random_ids(120), max_new_tokens=2, do_sample=False)
    assert lazyllm.stats(model).schedule == config.describe()


def test_every_candidate_uses_the_token_score_asked_for(monkeypatch):
    calls = faithful_above(0.6, monkeypatch)
    scoring = lazyllm.LazyConfig(score_window=8, score_pool=3, prune_layers=(1,), keep_ratios=(0.1,))
    config = lazyllm.calibrate(
        tiny_llama("xgen"), Tokenizer(), prompts(16), min_prompt_tokens=0, scoring=scoring, progress=False
    )
    tried = [c for c in calls if c is not None]
    assert tried and all(c.score_window == 8 and c.score_pool == 3 for c in tried)
    assert config.describe_scoring() == "window8+pool3" and config.prune_layers != (1,), "the schedule is searched"


@pytest.mark.parametrize("name, score", [("balanced", "window32+pool7"), ("default", "paper")])
def test_a_preset_name_as_scoring_means_the_token_score_that_preset_carries(name, score, monkeypatch):
    calls = faithful_above(0.6, monkeypatch)
    config = lazyllm.calibrate(
        tiny_llama("xgen"), Tokenizer(), prompts(16), min_prompt_tokens=0, scoring=name, progress=False
    )
    tried = [c for c in calls if c is not None]
    assert tried and all(c.describe_scoring() == score for c in tried)
    assert config.describe_scoring() == score


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scoring="fast"), "default, balanced, aggressive"),
        (dict(min_agreement=0.95), "at least 73 prompts"),
        (dict(min_prompt_tokens=500), "shorter than min_prompt_tokens=500"),
        (dict(target="both"), "target must be"),
        (dict(target="speed"), "speedup > 1"),
        (dict(min_agreement=1.0), "min_agreement must lie"),
    ],
)
def test_requests_it_cannot_answer_are_refused_before_any_work(kwargs, message, monkeypatch):
    model = tiny_llama("gqa")
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("no generation before the checks"))
    with pytest.raises(lazyllm.ConfigError, match=message):
        lazyllm.calibrate(model, Tokenizer(), prompts(16), **{"min_prompt_tokens": 0, **kwargs})


def test_an_unsupported_model_is_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).eval()
    with pytest.raises(lazyllm.UnsupportedModelError):
        lazyllm.calibrate(gpt2, Tokenizer(), prompts(16), progress=False)


def test_ladder_is_ordered_by_prefill_cost():
    configs = ladder(30, [(0.5,), (0.5, 0.25)], (0.2, 0.5, 0.8))
    fractions = [c.prefill_fraction(30) for c in configs]
    assert fractions == sorted(fractions) and len(set(fractions)) == 6
    assert "24:0.5" in [c.describe() for c in configs], "the default's one-cut shape is a candidate"
    assert lazyllm.LazyConfig(prune_layers=(15,), keep_ratios=(0.5,)).prefill_fraction(30) == 0.75


def test_save_and_load_round_trip_with_the_model_depth(tmp_path):
    model = tiny_llama("gqa")  # 6 layers
    config = lazyllm.LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.2), score_window=8, score_pool=3)
    path = tmp_path / "c.json"
    config.save(path, model)
    data = json.loads(path.read_text())
    assert data["num_layers"] == 6 and data["lazyllm"] == lazyllm.__version__
    assert lazyllm.LazyConfig.load(path, model) == config
    with pytest.raises(lazyllm.ConfigError, match="6 layers; this model has 32"):
        lazyllm.LazyConfig.load(path, tiny_llama("xgen"))
    data["config"]["future_option"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(lazyllm.ConfigError, match="future_option"):
        lazyllm.LazyConfig.load(path)
    path.write_text("[]")
    with pytest.raises(lazyllm.ConfigError, match="not a lazyllm config file"):
        lazyllm.LazyConfig.load(path)


def test_end_to_end_on_smollm2_the_choice_keeps_every_answer_when_patched(smollm2, tmp_path):
    """7 real-text chat prompts: the config calibrate returns, patched as a user would, answers as the unpruned
    model on every prompt (a lower bound of 0.6 needs 7 of 7), and saves and loads with the model's depth."""
    from lazyllm.documents import long_document_question

    model, tokenizer = smollm2
    texts = [long_document_question(tokenizer, length=200, seed=seed)[0] for seed in range(7)]
    chats = [[{"role": "user", "content": text}] for text in texts]
    config = lazyllm.calibrate(
        model, tokenizer, chats, min_agreement=0.6, max_new_tokens=6, min_prompt_tokens=0, progress=False
    )
    assert config.prune_layers, config.summary()
    assert any(t["agreed"] == 7 for t in config.report["trials"]) and config.report["ttft_ratio"] > 0
    ids = [encode(tokenizer, chat) for chat in chats]
    unpruned = [greedy(model, x, max_new_tokens=6) for x in ids]
    with lazyllm.patched(model, config):
        pruned = [greedy(model, x, max_new_tokens=6) for x in ids]
        assert lazyllm.stats(model).pruned
    assert all(torch.equal(a, b) for a, b in zip(pruned, unpruned))
    config.save(tmp_path / "smollm2.json", model)
    assert lazyllm.LazyConfig.load(tmp_path / "smollm2.json", model).describe() == config.describe()
