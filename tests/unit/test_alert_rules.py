"""Alert rules files: defaults, and readable errors for every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_common.settings import ConfigError
from iot_consumer.alerts.rules import SilenceRule, ThresholdRule, load_rules, parse_rules


def test_the_defaults_cover_the_seed_thresholds() -> None:
    """Without a rules file the built-in rules apply: 30 °C with a 29.5 °C clear level, humidity
    above 80 / below 30, and silence."""
    rules = load_rules(None)
    temperature = rules.by_name("temperatura_alta")
    assert isinstance(temperature, ThresholdRule)
    assert (temperature.direction, temperature.threshold, temperature.clear) == ("above", 30.0, 29.5)
    assert temperature.violates(30.01)
    assert not temperature.violates(30.0)
    assert temperature.cleared(29.4)
    assert not temperature.cleared(29.7)
    assert {r.name for r in rules.all} == {"temperatura_alta", "umidade_alta", "umidade_baixa", "sensor_silencioso"}
    assert isinstance(rules.by_name("sensor_silencioso"), SilenceRule)


def test_a_rules_file_is_read(tmp_path: Path) -> None:
    """A TOML rules file is read; a rule without a clear level clears at its threshold."""
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "quente"\nmetric = "temperatura"\nabove = 26\n', encoding="utf-8")
    rules = load_rules(path)
    rule = rules.by_name("quente")
    assert isinstance(rule, ThresholdRule)
    assert rule.clear == 26.0  # no clear level given: clears at the threshold
    assert rules.source == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]\n", "not valid TOML"),
        ('[[rule]]\nname = "x"\nmetric = "temperatura"\n', "rule 1 ('x') needs exactly one of above or below"),
        ('[[rule]]\nname = "x"\nmetric = "pressao"\nabove = 1\n', "metric: Input should be 'temperatura' or 'umidade'"),
        (
            '[[rule]]\nname = "x"\nmetric = "temperatura"\nabove = 30\nclear_below = 31\n',
            "must not be above the threshold",
        ),
        ('[[rule]]\nname = "x"\nmetric = "umidade"\nbelow = 30\nclear_above = 20\n', "must not be below the threshold"),
        ('[[rule]]\nname = "x"\nmetric = "umidade"\nbelow = 30\nclear_below = 40\n', "clears with clear_above"),
        ('[[rule]]\nname = "x"\nsilent_for_seconds = 0\n', "greater than 0"),
        ('[[rule]]\nname = "x"\nsilent_for_seconds = 5\nabove = 3\n', "takes no above"),
        ('[[rule]]\nname = "Bad Name"\nsilent_for_seconds = 5\n', "name: String should match pattern"),
        ('[[rule]]\nname = "x"\nsilent_for_seconds = 5\nseverity = "panic"\n', "severity: Input should be"),
        ('[[rule]]\nname = "x"\nsilent_for_seconds = 5\ntypo = 1\n', "typo: Extra inputs are not permitted"),
        (
            '[[rule]]\nname = "x"\nsilent_for_seconds = 5\n[[rule]]\nname = "x"\nsilent_for_seconds = 9\n',
            "duplicate rule names: x",
        ),
    ],
)
def test_a_bad_rules_file_fails_with_a_readable_message(text: str, message: str) -> None:
    """Each kind of mistake in a rules file is refused with a message naming the rule and the field."""
    with pytest.raises(ConfigError, match=r"^alert rules test: ") as caught:
        parse_rules(text, "test")
    assert message in str(caught.value)


def test_a_missing_rules_file_names_the_variable(tmp_path: Path) -> None:
    """A rules file that cannot be read is reported with ALERT_RULES_FILE and the path."""
    with pytest.raises(ConfigError, match=r"ALERT_RULES_FILE=.*nope.toml: cannot read it"):
        load_rules(tmp_path / "nope.toml")
