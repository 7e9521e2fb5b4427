# The intervention (config key `intervention`): per (condition, test image) one job edits every
# trial's generation through the probes, one scores it with the task's labeler, then tables
# and figures. Off unless intervention.enabled.


include: "intervention_common.smk"


rule intervene:
    input:
        model=model_input(CONFIG["models"]["diffusion"]),
        layers=f"{RESULTS}/model/layers.json",
        label=f"{RESULTS}/labels/{{task}}/{{prompt_id}}/{{seed}}.npz",
        probes=intervention_probes,
    output:
        directory(INTERVENTION_DIR),
    log:
        f"{LOGS}/intervene/{{task}}/{{condition}}/{{prompt_id}}/{{seed}}.log",
    wildcard_constraints:
        condition="probe|random-probe|permuted-probe|identity",
    conda:
        "../envs/generate.yaml"
    resources:
        **gpu_resources(CONFIG["generation"]["device"], None),
    params:
        image=lambda wildcards: {
            "prompt_id": wildcards.prompt_id,
            "seed": int(wildcards.seed),
            "prompt": PROMPT_TEXT[(wildcards.prompt_id, int(wildcards.seed))],
        },
        probe_keys=intervention_probe_keys,
        model=CONFIG["models"]["diffusion"],
        allow_download=untracked(ALLOW_DOWNLOAD),
        generation=without(CONFIG["generation"], "device"),
        device=untracked(CONFIG["generation"]["device"]),
        intervention=INTERVENTION,
    script:
        "../scripts/intervene.py"


rule intervention_score:
    input:
        edited=INTERVENTION_DIR,
        image=f"{GENERATION_DIR}/image.png",
        label=f"{RESULTS}/labels/{{task}}/{{prompt_id}}/{{seed}}.npz",
        model=lambda wildcards: model_input(
            CONFIG["labels"]["tasks"][wildcards.task]["model"]
        ),
    output:
        scores=f"{INTERVENTION_DIR}.scores.csv",
        maps=f"{INTERVENTION_DIR}.maps.npz",
    log:
        f"{LOGS}/intervention_score/{{task}}/{{condition}}/{{prompt_id}}/{{seed}}.log",
    wildcard_constraints:
        condition="probe|random-probe|permuted-probe|identity",
    conda:
        "../envs/labels.yaml"
    resources:
        **gpu_resources(CONFIG["labels"]["device"], None),
    params:
        image=lambda wildcards: {
            "prompt_id": wildcards.prompt_id,
            "seed": int(wildcards.seed),
        },
        task=lambda wildcards: CONFIG["labels"]["tasks"][wildcards.task],
        allow_download=untracked(ALLOW_DOWNLOAD),
        device=untracked(CONFIG["labels"]["device"]),
        intervention=INTERVENTION,
    script:
        "../scripts/intervention_score.py"


rule intervention_summary:
    input:
        intervention_scores,
    output:
        edits=f"{RESULTS}/tables/intervention/{{task}}-edits.csv.gz",
        summary=report(
            f"{RESULTS}/tables/intervention/{{task}}-summary.csv",
            caption="../report/intervention_table.rst",
            category="Intervention",
            subcategory="{task}",
        ),
    log:
        f"{LOGS}/intervention_summary/{{task}}.log",
    conda:
        "../envs/probes.yaml"
    params:
        metrics=CONFIG["metrics"],
    script:
        "../scripts/intervention_summary.py"


rule intervention_figures:
    input:
        edits=f"{RESULTS}/tables/intervention/{{task}}-edits.csv.gz",
        summary=f"{RESULTS}/tables/intervention/{{task}}-summary.csv",
    output:
        distributions=report(
            f"{RESULTS}/figures/intervention/{{task}}-distributions.png",
            caption="../report/intervention_distributions.rst",
            category="Intervention",
            subcategory="{task}",
            labels={"figure": "distributions", "task": "{task}"},
        ),
        success=report(
            f"{RESULTS}/figures/intervention/{{task}}-success.png",
            caption="../report/intervention_success.rst",
            category="Intervention",
            subcategory="{task}",
            labels={"figure": "success vs edit size", "task": "{task}"},
        ),
    log:
        f"{LOGS}/intervention_figures/{{task}}.log",
    conda:
        "../envs/report.yaml"
    params:
        success=INTERVENTION["success"],
    script:
        "../scripts/intervention_figures.py"


rule intervention_examples:
    input:
        edited=lambda wildcards: [
            f"{RESULTS}/intervention/{wildcards.task}/{condition}/{prompt_id}/{seed}"
            for condition in intervention_conditions()
            for prompt_id, seed in INTERVENTION_IMAGES[: INTERVENTION["examples"]]
        ],
        maps=lambda wildcards: [
            f"{RESULTS}/intervention/{wildcards.task}/{condition}/{prompt_id}/{seed}.maps.npz"
            for condition in intervention_conditions()
            for prompt_id, seed in INTERVENTION_IMAGES[: INTERVENTION["examples"]]
        ],
        images=[
            f"{RESULTS}/generation/{prompt_id}/{seed}/image.png"
            for prompt_id, seed in INTERVENTION_IMAGES[: INTERVENTION["examples"]]
        ],
    output:
        report(
            f"{RESULTS}/figures/intervention/{{task}}-examples.png",
            caption="../report/intervention_examples.rst",
            category="Intervention",
            subcategory="{task}",
            labels={"figure": "examples", "task": "{task}"},
        ),
    log:
        f"{LOGS}/intervention_examples/{{task}}.log",
    conda:
        "../envs/report.yaml"
    params:
        conditions=lambda wildcards: intervention_conditions(),
        images=INTERVENTION_IMAGES[: INTERVENTION["examples"]],
        steps=lambda wildcards: intervention_cells()[1],
    script:
        "../scripts/intervention_examples.py"
