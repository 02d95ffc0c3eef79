"""`tlq export hf JOB DIR`: a fine-tuned model as a folder for the Hugging Face Hub.

The folder is what ``timm.models.push_to_hf_hub`` uploads: timm's ``config.json`` (architecture, classes, label
names, preprocessing), ``model.safetensors``, and a ``README.md`` model card with the job's metrics and
parameters. ``huggingface_hub.upload_folder`` (or `hf upload`) sends it as it is, and
``timm.create_model("hf-hub:ORG/NAME")`` or ``"local-dir:DIR"`` loads it. Nothing in it names a path of this
machine: a path is written as its last part.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tlq.errors import BadInput
from tlq.ml.model_card import CARD_FILE, MODEL_FILE, TIMM_CONFIG_FILE, read_card, write_timm_config

README_FILE = "README.md"


def export_hf(client, job_id: int, dest: str | Path) -> list[Path]:
    """Writes job ``job_id``'s model into the new folder ``dest``, all or nothing; returns the files written.

    Raises:
        BadInput: The job left no model, or ``dest`` exists and is not an empty folder.
    """
    job = client.get(job_id)
    kinds = {a["kind"] for a in job["artifacts"]}
    if not {"model", "model_card"} <= kinds:
        raise BadInput(
            f"job {job_id} ({job['task']}, {job['status']}) has no model to export; export a succeeded finetune job "
            "(`tlq jobs --task finetune --status succeeded`)"
        )
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} exists and is not an empty folder; name a new folder for the export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.tlq-export-{os.getpid()}")
    try:
        copied = [p.name for p in _copy_files(client, job_id, kinds, staging)]
        card = read_card(staging / CARD_FILE)
        (staging / CARD_FILE).unlink()  # tlq's own card names local paths; README.md says what it says, in public
        if TIMM_CONFIG_FILE not in copied:  # a job from before tlq wrote timm's config
            _write_config(card, staging / TIMM_CONFIG_FILE)
        (staging / README_FILE).write_text(model_card_markdown(job, card, dest.name), encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(dest / name for name in (TIMM_CONFIG_FILE, MODEL_FILE, README_FILE))


def _copy_files(client, job_id: int, kinds: set[str], staging: Path) -> list[Path]:
    """The model, tlq's card and timm's config, each checked against its recorded sha256."""
    from tlq.client.copying import copy_checked

    wanted = [kind for kind in ("model", "model_card", "timm_config") if kind in kinds]
    artifacts = [a for kind in wanted for a in client.artifacts(job_id, kind)]
    return copy_checked(client.settings.artifacts_dir, job_id, artifacts, staging)


def _write_config(card: dict[str, Any], path: Path) -> None:
    import timm
    import torch

    with torch.device("meta"):  # the config needs the architecture, not its weights
        model = timm.create_model(card["arch"], pretrained=False, num_classes=card["num_classes"])
    write_timm_config(model, path, card["classes"], card["data_config"])


def public(value: Any) -> Any:
    """``value`` with every path of this machine cut to its last part (``local-dir:/home/me/x`` -> ``local-dir:x``)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if not isinstance(value, str):
        return value
    scheme, sep, rest = value.partition(":") if value.startswith("local-dir:") else ("", "", value)
    looks_like_path = rest.startswith(("/", "~", "./", "../")) or (os.sep in rest and os.path.exists(rest))
    if looks_like_path:
        rest = Path(rest.rstrip("/")).name or rest
    return f"{scheme}{sep}{rest}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def _table(header: tuple[str, str], pairs: list[tuple[str, Any]]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {name} | {_number(value)} |".replace("\n", " ") for name, value in pairs]


def model_card_markdown(job: dict[str, Any], card: dict[str, Any], folder: str) -> str:
    """The README.md of an exported model: Hub metadata, what the model is, how to load it, its metrics and
    parameters."""
    classes = [str(c) for c in card["classes"]]
    title = public(job.get("name")) or f"{card['arch']} fine-tuned on {len(classes)} classes"
    source = public(card.get("weights_source") or "")
    data = card.get("data_config") or {}
    size = data.get("input_size") or [3, 224, 224]
    shown = ", ".join(classes[:20]) + (f" and {len(classes) - 20} more" if len(classes) > 20 else "")
    metrics = sorted((k, v) for k, v in (job.get("metrics") or {}).items() if v is not None)
    params = sorted((k, public(v)) for k, v in (job.get("params") or {}).items() if v is not None)
    lines = [
        "---",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- timm",
        "- tlq",
        "---",
        "",
        f"# {title}",
        "",
        f"A `{card['arch']}` fine-tuned with [tlq](https://pypi.org/project/tlq/) (job {job['id']}, strategy "
        f"`{card.get('strategy', '?')}`, from {source or 'its backbone'}) to tell {len(classes)} classes apart: "
        f"{shown}.",
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "import torch",
        "",
        f'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:{folder}"',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "labels = model.pretrained_cfg['label_names']",
        "with torch.no_grad():",
        "    probabilities = model(transform(image)[None]).softmax(-1)  # image: a PIL image",
        "```",
        "",
        f"Preprocessing (in `config.json`): {size[-2]}x{size[-1]} pixels, {data.get('interpolation', '?')} "
        f"interpolation, crop_pct {data.get('crop_pct', '?')}, mean {data.get('mean')}, std {data.get('std')}.",
        "",
        "## Results",
        "",
        *_table(("metric", "value"), metrics),
        "",
        "## Training",
        "",
        f"Backbone `{public(job.get('backbone'))}`; lineage: {' -> '.join(public(card.get('lineage') or [])) or '-'}.",
        "",
        *_table(("parameter", "value"), params),
        "",
    ]
    return "\n".join(lines)
