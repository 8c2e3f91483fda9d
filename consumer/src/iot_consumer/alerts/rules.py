"""Alert rules: what counts as a problem, how long it must last, and when it is over.

Rules come from a TOML file (``ALERT_RULES_FILE``) or, without one, from
:data:`DEFAULT_RULES_TOML` (the seed's "temperature above 30 °C", humidity outside 30-80 %,
and a sensor silent for a minute). Every threshold rule has two levels - the one that opens
the alert and the one that clears it - and minimum durations for both, so a value hovering at
the threshold opens one alert and closes it once, instead of flapping.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iot_common.settings import ConfigError

Severity = Literal["info", "warning", "critical"]
Metric = Literal["temperatura", "umidade"]
RuleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

DEFAULT_RULES_TOML = """\
# Opens when the temperature stays above 30 °C for 5 s; closes once it has been below
# 29.5 °C for 5 s (between 29.5 and 30 an open alert stays open: hysteresis).
[[rule]]
name = "temperatura_alta"
severity = "critical"
metric = "temperatura"
above = 30.0
clear_below = 29.5
for_seconds = 5
clear_for_seconds = 5

[[rule]]
name = "umidade_alta"
severity = "warning"
metric = "umidade"
above = 80.0
clear_below = 78.0
for_seconds = 10
clear_for_seconds = 10

[[rule]]
name = "umidade_baixa"
severity = "warning"
metric = "umidade"
below = 30.0
clear_above = 32.0
for_seconds = 10
clear_for_seconds = 10

# No reading from a sensor for 60 s (measured on the readings' own clock, see docs/ALERTS.md).
# When at least a fifth of the known fleet (and 100 sensors or more) goes silent together - a
# gateway, the network or the broker failed - one fleet-wide alert opens instead of one per sensor.
[[rule]]
name = "sensor_silencioso"
severity = "warning"
silent_for_seconds = 60
storm_share = 0.2
storm_min_sensors = 100
storm_window_seconds = 5
"""


class _RuleModel(BaseModel):
    """One ``[[rule]]`` table of the rules file, as written by an operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RuleName
    severity: Severity = "warning"
    metric: Metric | None = None
    above: float | None = None
    below: float | None = None
    clear_below: float | None = None
    clear_above: float | None = None
    for_seconds: float = Field(0.0, ge=0, le=86_400)
    clear_for_seconds: float = Field(0.0, ge=0, le=86_400)
    silent_for_seconds: float | None = Field(None, gt=0, le=86_400)
    storm_share: float | None = Field(None, gt=0, le=1)
    storm_min_sensors: int | None = Field(None, ge=2, le=100_000_000)
    storm_window_seconds: float | None = Field(None, ge=0, le=3600)

    @model_validator(mode="after")
    def _consistent(self) -> _RuleModel:
        if self.silent_for_seconds is None:
            storm = [
                k for k in ("storm_share", "storm_min_sensors", "storm_window_seconds") if getattr(self, k) is not None
            ]
            if storm:
                raise ValueError(f"{', '.join(storm)} belong to a silence rule (silent_for_seconds)")
        if self.silent_for_seconds is not None:
            extra = [
                k for k in ("metric", "above", "below", "clear_below", "clear_above") if getattr(self, k) is not None
            ]
            if extra:
                raise ValueError(f"a silence rule (silent_for_seconds) takes no {', '.join(extra)}")
            return self
        if self.metric is None:
            raise ValueError("needs either metric (with above or below) or silent_for_seconds")
        if (self.above is None) == (self.below is None):
            raise ValueError("needs exactly one of above or below")
        if self.above is not None:
            if self.clear_above is not None:
                raise ValueError("an 'above' rule clears with clear_below, not clear_above")
            clear = self.above if self.clear_below is None else self.clear_below
            if clear > self.above:
                raise ValueError(f"clear_below ({clear}) must not be above the threshold ({self.above})")
        else:
            if self.clear_below is not None:
                raise ValueError("a 'below' rule clears with clear_above, not clear_below")
            assert self.below is not None
            clear = self.below if self.clear_above is None else self.clear_above
            if clear < self.below:
                raise ValueError(f"clear_above ({clear}) must not be below the threshold ({self.below})")
        return self


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: list[_RuleModel] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Opens when ``metric`` is beyond ``threshold`` for ``for_seconds``; closes when it is back
    beyond ``clear`` (on the safe side) for ``clear_for_seconds``."""

    name: str
    severity: Severity
    metric: Metric
    direction: Literal["above", "below"]
    threshold: float
    clear: float
    for_seconds: float
    clear_for_seconds: float

    def violates(self, value: float) -> bool:
        return value > self.threshold if self.direction == "above" else value < self.threshold

    def cleared(self, value: float) -> bool:
        return value < self.clear if self.direction == "above" else value > self.clear

    def worse(self, value: float, than: float) -> bool:
        return value > than if self.direction == "above" else value < than

    def describe(self) -> str:
        sign, back = (">", "<") if self.direction == "above" else ("<", ">")
        return (
            f"{self.metric} {sign} {self.threshold:g} for {self.for_seconds:g} s; "
            f"clears at {back} {self.clear:g} for {self.clear_for_seconds:g} s"
        )


@dataclass(frozen=True, slots=True)
class SilenceRule:
    """Opens when a known sensor has sent nothing for ``silent_for_seconds``; closes on its next reading.

    A storm: when ``storm_min_sensors`` or more fall silent within ``storm_window_seconds`` of
    each other and the silent sensors then make up ``storm_share`` of the known fleet, one
    fleet-wide alert opens instead of one per sensor; it closes once fewer than half that share
    are still silent, and the sensors still silent then get alerts of their own (they are silent
    on their own). Where a storm could form (a partition knowing ``storm_min_sensors`` or more),
    a sensor's own alert waits ``storm_window_seconds`` past its deadline (stamped with the
    deadline all the same): a fleet's last readings spread over its reporting interval."""

    name: str
    severity: Severity
    silent_for_seconds: float
    storm_share: float = 0.2
    storm_min_sensors: int = 100
    storm_window_seconds: float = 5.0

    def describe(self) -> str:
        return f"no reading for {self.silent_for_seconds:g} s"

    def describe_storm(self, silent: int, known: int) -> str:
        return f"{silent} of {known} known sensors silent (no reading for {self.silent_for_seconds:g} s)"


Rule = ThresholdRule | SilenceRule


@dataclass(frozen=True, slots=True)
class RuleSet:
    threshold: tuple[ThresholdRule, ...]
    silence: tuple[SilenceRule, ...]
    source: str

    @property
    def all(self) -> tuple[Rule, ...]:
        return (*self.threshold, *self.silence)

    def by_name(self, name: str) -> Rule | None:
        return next((rule for rule in self.all if rule.name == name), None)


def _convert(model: _RuleModel) -> Rule:
    if model.silent_for_seconds is not None:
        return SilenceRule(
            model.name,
            model.severity,
            model.silent_for_seconds,
            0.2 if model.storm_share is None else model.storm_share,
            100 if model.storm_min_sensors is None else model.storm_min_sensors,
            5.0 if model.storm_window_seconds is None else model.storm_window_seconds,
        )
    assert model.metric is not None  # the validator guarantees metric and exactly one of above/below
    if model.above is not None:
        direction: Literal["above", "below"] = "above"
        threshold, clear = model.above, model.clear_below
    else:
        assert model.below is not None
        direction, threshold, clear = "below", model.below, model.clear_above
    return ThresholdRule(
        model.name,
        model.severity,
        model.metric,
        direction,
        threshold,
        threshold if clear is None else clear,  # no clear level given: clears at the threshold
        model.for_seconds,
        model.clear_for_seconds,
    )


def parse_rules(text: str, source: str) -> RuleSet:
    """Parse a rules file's text; ConfigError names the file, the rule and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"alert rules {source}: not valid TOML: {exc}") from None
    try:
        parsed = _RulesFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = list(error["loc"])
            where = ""
            if len(location) >= 2 and location[0] == "rule" and isinstance(location[1], int):
                rules = data.get("rule", [])
                index = location[1]
                name = rules[index].get("name") if index < len(rules) and isinstance(rules[index], dict) else None
                where = f"rule {index + 1}" + (f" ({name!r})" if name else "")
                location = location[2:]
            field = ".".join(str(part) for part in location)
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(" ".join(part for part in (where, field + ":" if field else "", message) if part))
        raise ConfigError(f"alert rules {source}: " + "; ".join(problems)) from None
    names = [rule.name for rule in parsed.rule]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"alert rules {source}: duplicate rule names: {', '.join(duplicates)}")
    rules = [_convert(model) for model in parsed.rule]
    return RuleSet(
        threshold=tuple(r for r in rules if isinstance(r, ThresholdRule)),
        silence=tuple(r for r in rules if isinstance(r, SilenceRule)),
        source=source,
    )


def load_rules(path: Path | None) -> RuleSet:
    """The rules in ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return parse_rules(DEFAULT_RULES_TOML, "(built-in defaults)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"ALERT_RULES_FILE={path}: cannot read it: {exc.strerror}") from None
    return parse_rules(text, str(path))
