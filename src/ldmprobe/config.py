"""Loading and validating the study configuration against its JSON schema."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


class ConfigError(ValueError):
    """The configuration breaks the schema; the message names the key and what is allowed."""


def load_schema() -> dict:
    """The schema, with the task names declared in ``ldmprobe.tasks`` (not repeated in it)."""
    from .tasks import TASKS

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    names = {"enum": list(TASKS)}
    for section in ("labels", "probe"):
        schema["properties"][section]["properties"]["tasks"]["propertyNames"] = names
    return schema


def _fill_defaults(schema: dict, value, root: dict):
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    for key, sub in schema["properties"].items():
        resolved = root["$defs"][sub["$ref"].rsplit("/", 1)[-1]] if "$ref" in sub else sub
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        elif key not in value and "default" in resolved:
            value[key] = copy.deepcopy(resolved["default"])
        if key in value:
            value[key] = _fill_defaults(sub, value[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value:
            if key not in schema["properties"]:
                value[key] = _fill_defaults(extra, value[key], root)
    return value


def _summarise(schema: dict, plural: bool = False) -> str:
    """A schema alternative in words, for messages: "'all'", "a list of integers >= 0"."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return f"one of {schema['enum']}"
    if schema.get("type") == "array":
        return f"a list of {_summarise(schema.get('items', {}), plural=True)}"
    words = str(schema.get("type", "value")) + ("s" if plural else "")
    if "minimum" in schema:
        words += f" >= {schema['minimum']}"
    return words


def _key(path) -> str:
    """A config key as written in messages: ``probe.steps[1]``, ``prompts.files[0].path``."""
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key or "(top level)"


def _describe(error) -> str:
    key = _key(error.absolute_path)
    if error.validator == "enum":
        allowed = error.validator_value
        return f"config key '{key}': {error.instance!r} is not allowed; allowed: {allowed}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        guesses = [
            f"'{match[0]}'" + (f" for '{name}'" if len(unknown) > 1 else "")
            for name in unknown
            for match in [difflib.get_close_matches(name, allowed, n=1)]
            if match
        ]
        hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
        return f"config key '{key}': {error.message}{hint}; allowed keys: {allowed}"
    if error.validator == "propertyNames":
        return f"config key '{key}': {error.message}"
    if error.validator in ("oneOf", "anyOf"):
        allowed = " or ".join(_summarise(option) for option in error.validator_value)
        return f"config key '{key}': {error.instance!r} is not allowed; allowed: {allowed}"
    return f"config key '{key}': {error.message}"


def validate_config(config: dict) -> dict:
    """A validated copy of ``config`` with schema defaults filled in."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = load_schema()
    filled = _fill_defaults(schema, copy.deepcopy(config), schema)
    errors = list(Draft202012Validator(schema).iter_errors(filled))
    if errors:
        raise ConfigError(_describe(best_match(errors)))
    fractions = filled["prompts"]["split_fractions"]
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(
            f"config key 'prompts.split_fractions': fractions sum to {sum(fractions.values())}, "
            "they must sum to 1"
        )
    return filled


def load_config(path: str | Path) -> dict:
    return validate_config(yaml.safe_load(Path(path).read_text()) or {})


def probe_settings(config: dict) -> dict[str, dict]:
    """Per configured task, the probe settings: task overrides on top of the defaults."""
    probe = config["probe"]
    return {
        task: {**probe["defaults"], **probe["tasks"].get(task, {})}
        for task in config["labels"]["tasks"]
    }
