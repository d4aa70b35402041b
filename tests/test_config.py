import json
from pathlib import Path

import pytest

from lazyllm import PRESETS, ConfigError, LazyConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prune_layers=(4, 8), keep_ratios=(0.5,)), "one keep ratio per pruning layer"),
        (dict(prune_layers=(0,), keep_ratios=(0.5,)), ">= 1"),
        (dict(prune_layers=(8, 4), keep_ratios=(0.5, 0.3)), "strictly increasing"),
        (dict(prune_layers=(4, 4), keep_ratios=(0.5, 0.3)), "strictly increasing"),
        (dict(prune_layers=(4.0,), keep_ratios=(0.5,)), "integers"),
        (dict(prune_layers=(4,), keep_ratios=(0.0,)), "(0, 1]"),
        (dict(prune_layers=(4,), keep_ratios=(1.5,)), "(0, 1]"),
        (dict(prune_layers=(4,), keep_ratios=(float("nan"),)), "(0, 1]"),
        (dict(prune_layers=(4, 8), keep_ratios=(0.3, 0.5)), "must not increase"),
        (dict(min_prompt_tokens=-1), "min_prompt_tokens"),
        (dict(min_prompt_tokens=1.5), "min_prompt_tokens"),
        (dict(min_prompt_tokens=True), "min_prompt_tokens"),
        (dict(revive="yes"), "revive"),
        (dict(revive_all_at=0), "revive_all_at"),
    ],
)
def test_bad_values_are_refused_with_a_hint(kwargs, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        LazyConfig(**kwargs)


def test_depth_is_checked():
    with pytest.raises(ConfigError, match="below 30"):
        LazyConfig(prune_layers=(10, 30), keep_ratios=(0.5, 0.3)).check_depth(30)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("depth", [2, 4, 6, 12, 22, 30, 32, 40, 80])
def test_presets_fit_every_depth(name, depth):
    config = LazyConfig.preset(name, depth)
    config.check_depth(depth)
    assert config.prune_layers and all(1 <= layer < depth for layer in config.prune_layers)


def test_preset_places_cuts_by_depth_fraction():
    config = LazyConfig.preset("balanced", 30)
    assert config.prune_layers == (18, 24)
    assert config.keep_ratios == (0.5, 0.2)
    config = LazyConfig.preset("aggressive", 32)
    assert config.prune_layers == (8, 16, 24)
    assert config.keep_ratios == (0.5, 0.3, 0.15)
    assert LazyConfig.preset("off", 30).prune_layers == ()


def test_presets_carry_the_token_score_their_rule_chose_and_overrides_win():
    assert LazyConfig.preset("default", 30).describe_scoring() == "paper"
    for name in ("balanced", "aggressive"):
        assert LazyConfig.preset(name, 30).describe_scoring() == "window32+pool7"
        assert LazyConfig.parse(name, 30) == LazyConfig.preset(name, 30)
    paper = LazyConfig.preset("balanced", 30, score_window=1, score_pool=1)
    assert paper.describe_scoring() == "paper" and paper.prune_layers == (18, 24)


def test_parse_round_trips_and_rejects_garbage():
    config = LazyConfig.parse("8:0.5,16:0.3,24:0.1", 30)
    assert config.prune_layers == (8, 16, 24) and config.keep_ratios == (0.5, 0.3, 0.1)
    assert LazyConfig.parse(config.describe(), 30) == config
    assert LazyConfig.parse("default", 30) == LazyConfig.preset("default", 30)
    for bad in ["8-0.5", "eight:0.5", "8:half", "", "fastest"]:
        with pytest.raises(ConfigError, match="layer:keep"):
            LazyConfig.parse(bad, 30)
    with pytest.raises(ConfigError, match="below 30"):
        LazyConfig.parse("8:0.5,31:0.2", 30)


def test_keep_counts_round_up_and_spare_short_prompts():
    config = LazyConfig(prune_layers=(2, 4), keep_ratios=(0.5, 0.1), min_prompt_tokens=100)
    assert config.keep_counts(1001) == [501, 101]
    assert config.keep_counts(99) == [99, 99]
    assert LazyConfig(prune_layers=(2,), keep_ratios=(0.001,), min_prompt_tokens=0).keep_counts(10) == [1]


SAVED_01 = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "smollm2-4k.lazyllm.json"


def test_a_config_saved_by_lazyllm_01_still_loads():
    config = LazyConfig.load(SAVED_01)
    assert config.describe() == "24:0.5" and config.describe_scoring() == "window32+pool7"


def test_a_saved_config_using_a_retired_option_says_what_changed(tmp_path):
    data = json.loads(SAVED_01.read_text())
    data["config"]["revival"] = "beat_weakest"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as refused:
        LazyConfig.load(path)
    message = str(refused.value)
    assert "revival='beat_weakest'" in message and "retired" in message, "the option and its value"
    assert "revival='paper' still loads" in message and "revive_all_at=None" in message, "what replaced it"
    assert "Delete them from the file" in message and "docs/" not in message and "http" not in message
