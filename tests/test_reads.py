"""What the study reads (ldmprobe.generation.reads) and what generation.store keeps of it."""

from pathlib import Path

import pytest
import yaml

from ldmprobe.backbones.stable_diffusion import attention_layers
from ldmprobe.core.config import ConfigError, validate_config
from ldmprobe.generation.reads import Selection, check_stored, readers, store_plan

REPO = Path(__file__).resolve().parents[1]
# The SD v1.x U-Net's block layout (diffusers' defaults): 16 self-attention layers.
SD1 = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
}
LAYERS = attention_layers(SD1, 16, 16)
CALLS = 15


def demo(**generation) -> dict:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["generation"].update(generation)
    return validate_config(config)


def test_read_stores_what_the_probe_grid_and_the_controls_read():
    config = demo(store="read")
    assert [reader.key for reader in readers(config)] == [
        "probe",
        "controls.permuted_unet",
        "controls.vae",
    ]
    plan = store_plan(config)
    assert plan["denoiser"] == Selection("all", (0, 3, 7, 14))
    assert plan["permuted"].resolve_layers(LAYERS) == ["down2.1", "up3.2"]
    assert plan["vae"].resolve_steps(CALLS) == [0, 3, 7, 14]
    check_stored(config, LAYERS, CALLS)


def test_all_stores_every_layer_at_every_step():
    plan = store_plan(demo(store="all"))
    assert plan["denoiser"].resolve_layers(LAYERS) == [layer.name for layer in LAYERS]
    assert plan["denoiser"].resolve_steps(CALLS) == list(range(CALLS))


def test_the_reference_config_stores_everything():
    config = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert config["generation"]["store"] == "all"


@pytest.mark.parametrize(
    ("store", "fragments"),
    [
        (
            {"layers": "all", "steps": [0, 3, 7]},
            ["config key 'probe' reads steps [14]", "'generation.store'", "stores layers"],
        ),
        (
            {"layers": ["down*", "mid.0"], "steps": "all"},
            ["config key 'probe' reads layers ['up1.0'", "'generation.store'"],
        ),
    ],
    ids=["step", "layer"],
)
def test_an_unstored_layer_or_step_names_both_keys(store, fragments):
    config = demo(store=store)
    with pytest.raises(ConfigError) as caught:
        check_stored(config, LAYERS, CALLS)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_control_outside_an_explicit_store_is_named():
    config = demo(store={"layers": ["down2.1"], "steps": "all"})
    config["probe"]["layers"] = ["down2.1"]
    with pytest.raises(ConfigError, match=r"'controls.permuted_unet' reads layers \['up3.2'\]"):
        check_stored(config, LAYERS, CALLS)


def test_the_intervention_declares_the_cells_it_edits_so_read_stores_them():
    """Saliency edits the decoder's layers at steps 0-4 (Chen et al.), through the probes of
    those cells and, for permuted-probe, the permuted U-Net's: read stores them all."""
    config = demo(store="read")
    config["intervention"].update(enabled=True, task="saliency")
    config["controls"]["permuted_unet"]["layers"] = ["up*"]
    keys = [(reader.key, reader.source) for reader in readers(config)]
    assert ("intervention", "denoiser") in keys and ("intervention", "permuted") in keys
    plan = store_plan(config)
    assert plan["denoiser"].resolve_steps(CALLS) == [0, 1, 2, 3, 4, 7, 14]
    permuted_steps = plan["permuted"].resolve_steps(CALLS)
    assert {0, 1, 2, 3, 4} <= set(permuted_steps)
    up = [layer.name for layer in LAYERS if layer.name.startswith("up")]
    assert set(up) <= set(plan["permuted"].resolve_layers(LAYERS))
    check_stored(config, LAYERS, CALLS)

    # Without the intervention the edited steps 1, 2 and 4 are not stored.
    config["intervention"]["enabled"] = False
    assert plan != store_plan(config)
    assert 1 not in store_plan(config)["denoiser"].resolve_steps(CALLS)


def test_an_intervention_outside_an_explicit_store_is_named():
    config = demo(store={"layers": "all", "steps": [0, 3, 7, 14]})
    config["intervention"].update(enabled=True, task="depth", controls=[])
    with pytest.raises(ConfigError, match=r"'intervention' reads steps \[1, 2\]"):
        check_stored(config, LAYERS, CALLS)


@pytest.mark.parametrize("family", ["pixart", "stable-diffusion-3", "flux"])
def test_a_transformer_family_checks_its_store_before_any_job(tmp_path, family):
    """The transformer adapters name their layers from the denoiser's config alone, so an
    unstored layer stops the run at the preflight, as for SD, not at the first probe cell."""
    import json

    from ldmprobe.backbones import get_backbone
    from ldmprobe.preflight import check_store, study_table

    full_size = json.loads((REPO / "tests" / "data" / "full_size_configs.json").read_text())
    folder = tmp_path / "model" / get_backbone(family).denoiser_attribute
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(full_size[family]))
    config = demo(store={"layers": ["*00"], "steps": "all"}, height=256, width=256)
    config["models"]["diffusion"] = {"id": str(tmp_path / "model"), "backbone": family}
    config["controls"]["permuted_unet"]["enabled"] = False
    config["controls"]["vae"]["enabled"] = False

    table = study_table(config)
    assert [layer.name for layer in table][:2] in (["block00", "block01"], ["double00", "double01"])
    assert {(layer.height, layer.width) for layer in table} == {(16, 16)}
    with pytest.raises(ConfigError, match=r"config key 'probe' reads layers \['(block|double)01'"):
        check_store(config)
    config["probe"]["layers"] = ["*00"]
    check_store(config)
