import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ldmprobe.core.config import ConfigError, load_config, probe_settings, validate_config

REPO = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["generation"]["steps"] == 15


def test_defaults_are_filled():
    config = demo()
    del config["generation"]["codec"], config["generation"]["store"], config["probe"]["device"]
    filled = validate_config(config)
    assert filled["generation"]["codec"] == {"name": "blosc-zstd", "level": 3, "quantise": "none"}
    assert filled["generation"]["store"] == "read"
    assert filled["probe"]["device"] == "cpu"
    assert filled["probe"]["defaults"]["epochs"] == 30


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(bogus=1), r"'\(top level\)'.*'bogus' was unexpected\); allowed"),
        (
            lambda c: c["generation"].update(stpes=15),
            r"'generation'.*'stpes' was unexpected\); did you mean 'steps'\?; allowed keys",
        ),
        (
            lambda c: c["controls"].update(postion={"enabled": True}),
            r"'controls'.*did you mean 'position'\?",
        ),
        (lambda c: c["generation"].update(steps="15"), r"'generation.steps'.*not of type"),
        (lambda c: c["generation"].update(steps=0), r"'generation.steps'.*minimum"),
        (
            lambda c: c["generation"].update(cfg_half="left"),
            r"'generation.cfg_half'.*allowed: \['cond', 'uncond', 'both'\]",
        ),
        (
            lambda c: c["labels"]["tasks"].update(normals={"labeler": "x", "model": {"id": "y"}}),
            r"'labels.tasks'.*normals",
        ),
        (lambda c: c["probe"]["defaults"].update(lr=-1), r"'probe.defaults.lr'"),
        (
            lambda c: c["prompts"].update(split_fractions={"train": 0.5, "val": 0.1, "test": 0.1}),
            r"sum to 1",
        ),
    ],
)
def test_bad_config_names_the_key(edit, message):
    config = demo()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_schema_reads_the_declared_tasks_and_controls():
    """Task names come from ldmprobe.core.tasks; the controls section has one entry per declared
    control source (ldmprobe.generation.sources), and nothing else."""
    from ldmprobe.core.config import load_schema
    from ldmprobe.core.tasks import TASKS
    from ldmprobe.generation.sources import CONTROLS

    schema = load_schema()["properties"]
    for section in ("labels", "probe"):
        assert schema[section]["properties"]["tasks"]["propertyNames"] == {"enum": list(TASKS)}
    assert set(schema["controls"]["properties"]) == {source.control for source in CONTROLS}


def test_probe_settings_merge_task_overrides():
    config = validate_config(demo())
    config["probe"]["tasks"] = {"depth": {"lr": 0.01}}
    assert probe_settings(config)["depth"]["lr"] == 0.01
    assert probe_settings(config)["depth"]["epochs"] == 30


def test_parse_time_imports_leave_torch_out():
    """The Snakefile is parsed again in every job (and every cluster job): importing torch
    there would cost more than a second each time."""
    statements = sorted(
        {
            line.strip()
            for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
            for line in path.read_text().splitlines()
            if line.strip().startswith(("from ldmprobe", "import ldmprobe"))
        }
    )
    assert statements
    modules = [statement.split()[1] for statement in statements]
    probe = f"import sys; import {', '.join(modules)}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", modules


@pytest.mark.parametrize("rewrite", ["reordered", "flow-style", "numbers"])
def test_a_rewritten_config_validates_to_the_same_params(rewrite):
    """Key order, YAML style and number spelling never reach the rules' params: validation
    gives the same config, down to its repr (what Snakemake compares)."""
    from workflow import REWRITES

    written = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    text = REWRITES[rewrite](written)
    assert text != yaml.safe_dump(written, sort_keys=False)
    rewritten = validate_config(yaml.safe_load(text))
    original = validate_config(written)
    assert repr(rewritten) == repr(original)
    assert repr(probe_settings(rewritten)) == repr(probe_settings(original))


def test_numbers_take_their_schema_type():
    written = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    written["generation"].update(steps=15.0, guidance_scale=7)
    written["probe"]["defaults"]["lr"] = "1e-3"  # as YAML 1.1 reads `lr: 1e-3`
    written["probe"]["steps"] = [0, 3.0, "7e0", 14]
    config = validate_config(written)
    assert repr(config["generation"]["steps"]) == "15"
    assert repr(config["generation"]["guidance_scale"]) == "7.0"
    assert repr(config["probe"]["defaults"]["lr"]) == "0.001"
    assert repr(config["probe"]["steps"]) == "[0, 3, 7, 14]"
    written["generation"]["steps"] = "15"  # a quoted string stays a string: an error
    with pytest.raises(ConfigError, match="'generation.steps': '15' is not of type"):
        validate_config(written)


PREVIEWS = {"labeler": "dpt", "model": {"id": "resources/demo-models/dpt-depth"}}


def test_previews_labeler_is_optional_and_validated():
    """labels.tasks.<task>.previews: unset stays unset (the rules' params, so every existing
    output, unchanged); set, it is a labeler section of its own."""
    from ldmprobe.labels import check_labelers
    from ldmprobe.preflight import check_consistency

    plain = validate_config(demo())
    assert all("previews" not in section for section in plain["labels"]["tasks"].values())
    config = demo()
    config["labels"]["tasks"]["depth"]["previews"] = dict(PREVIEWS)
    filled = validate_config(config)
    assert filled["labels"]["tasks"]["depth"]["previews"] == PREVIEWS
    check_consistency(filled)
    check_labelers(filled["labels"]["tasks"])
    world = load_config(REPO / "config" / "world.yaml")
    check_consistency(world)
    for task, section in world["labels"]["tasks"].items():
        assert section["labeler"] == "world"
        assert section["previews"] == {
            "labeler": "world-net",
            "model": {"id": "world/weights/labeler"},
            "options": {"target": task},
        }


@pytest.mark.parametrize(
    ("previews", "message"),
    [
        ({"labeler": "dpt"}, r"'labels.tasks.depth.previews'.*'model' is a required"),
        (
            {**PREVIEWS, "model_id": "x"},
            r"'labels.tasks.depth.previews'.*'model_id' was unexpected",
        ),
        (
            {**PREVIEWS, "labeler": "midas"},
            r"'labels.tasks.depth.previews.labeler': 'midas' is not",
        ),
        (
            {**PREVIEWS, "labeler": "rembg"},
            r"'labels.tasks.depth.previews.labeler': labeler 'rembg' makes \['saliency'\]",
        ),
        (
            {**PREVIEWS, "options": {"treshold": 1}},
            r"'labels.tasks.depth.previews': labeler 'dpt' has no option\(s\) \['treshold'\]",
        ),
    ],
    ids=["no model", "unknown key", "unknown labeler", "labeler of another task", "bad option"],
)
def test_bad_previews_labeler_names_its_key(previews, message):
    from ldmprobe.labels import check_labelers
    from ldmprobe.preflight import check_consistency

    config = demo()
    config["labels"]["tasks"]["depth"]["previews"] = previews
    with pytest.raises(ConfigError, match=message):
        filled = validate_config(config)
        check_consistency(filled)
        check_labelers(filled["labels"]["tasks"])
