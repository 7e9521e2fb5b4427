"""Loading and validating the study configuration against its JSON schema."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


class ConfigError(ValueError):
    """The configuration breaks the schema; the message names the key and what is allowed."""


def load_schema() -> dict:
    """The schema, with the task names declared in ``ldmprobe.core.tasks`` (not repeated in it)."""
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


def _resolve(schema: dict, root: dict) -> dict:
    if "$ref" in schema:
        return root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


# A number in exponent notation. YAML 1.1 (PyYAML, so Snakemake's config loader) reads a float
# only with a dot and a signed exponent: `1e-3` and `1.0e3` come back as strings.
EXPONENT_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _number(schema: dict, value):
    """``value`` in the one spelling of its schema type: ``number`` keys hold floats
    (``15`` -> ``15.0``, ``"1e-3"`` -> ``0.001``), ``integer`` keys ints (``15.0`` -> ``15``,
    which JSON Schema accepts as an integer). Anything else is left to the validator."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, bool) or not ({"number", "integer"} & set(types)):
        return value
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value):
        value = float(value)
    if "integer" in types and isinstance(value, float) and value.is_integer():
        return int(value)
    if "number" in types and isinstance(value, int):
        return float(value)
    return value


def _canonical(schema: dict, value, root: dict):
    """One spelling of a config value: its numbers per the schema (``_number``) and every
    mapping's keys sorted, so that key order, YAML style and number spelling never reach the
    rules' params (Snakemake compares their ``repr``)."""
    schema = _resolve(schema, root)
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        value = _canonical(option, value, root)
    value = _number(schema, value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else {}
        return {
            key: _canonical(properties.get(key, extra), value[key], root)
            for key in sorted(value, key=str)
        }
    if isinstance(value, list):
        items = schema.get("items", {})
        return [_canonical(items, item, root) for item in value]
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
    """A validated copy of ``config`` with schema defaults filled in, in one canonical form:
    plain dicts with sorted keys, numbers spelled as their schema type (``_canonical``)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = load_schema()
    filled = _canonical(schema, _fill_defaults(schema, copy.deepcopy(config), schema), schema)
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
    """Per configured task, the probe settings: task overrides on top of the defaults, keys
    sorted (they are rule params)."""
    probe = config["probe"]
    return {
        task: dict(sorted({**probe["defaults"], **probe["tasks"].get(task, {})}.items()))
        for task in config["labels"]["tasks"]
    }
