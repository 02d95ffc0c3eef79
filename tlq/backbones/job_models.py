"""Models fine-tuned by earlier jobs as backbones: ``--backbone job:ID``.

The job's model card gives the architecture, classes and preprocessing; its safetensors give the weights.
Finetune again (a new head when the classes differ), extract features, predict: every task takes them.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from tlq.db import queries
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.model_card import read_card, timm_data_config
from tlq.plugins.artifacts import sha256_of
from tlq.plugins.backbone import BackboneRef, LoadedBackbone

SCHEME = "job"


def parse_job_ref(name: str) -> int:
    text = name.split(":", 1)[1] if ":" in name else ""
    if not text.strip().isdigit():
        raise BadInput(f"backbone {name!r} is not job:ID; write it as job:12 (`tlq backbones --filter 'job:*'`)")
    return int(text)


def model_files(env: Environment, job_id: int, verify: bool = True) -> tuple[Path, Path]:
    """The model card and weights of succeeded job ``job_id``, checked against the sha256 recorded when the job
    wrote them (``verify``); raises BadInput naming what is wrong."""
    with env.db.read_session() as session:
        job = queries.get_job(session, job_id)
        if job is None:
            raise BadInput(
                f"there is no job {job_id} to take a model from; `tlq backbones --filter 'job:*'` lists them"
            )
        if job.status != "succeeded":
            raise BadInput(
                f"job {job_id} is {job.status}, so it left no model; use a succeeded finetune job "
                "(`tlq jobs --task finetune --status succeeded`)"
            )
        recorded = {a.kind: a for a in queries.list_artifacts(session, job_id)}
    if "model_card" not in recorded or "model" not in recorded:
        raise BadInput(f"job {job_id} ({job.task}) produced no model; use a finetune job as a backbone")
    for kind in ("model_card", "model") if verify else ():
        verify_artifact(env, job_id, recorded[kind])
    root = env.settings.artifacts_dir
    return root / recorded["model_card"].path, root / recorded["model"].path


def verify_artifact(env: Environment, job_id: int, artifact) -> None:
    """Checks a model file against the sha256 recorded when its job wrote it; raises BadInput naming what
    happened (removed, or changed since) and the fix."""
    path = env.settings.artifacts_dir / artifact.path
    if not path.is_file():
        raise BadInput(
            f"{path} of job {job_id} was removed after the job wrote it; restore it, or check TLQ_ARTIFACTS_DIR "
            "points at the artifacts of this database"
        )
    if sha256_of(path) != artifact.sha256:
        raise BadInput(
            f"{path} was changed after job {job_id} wrote it (its sha256 no longer matches the one recorded); "
            f"restore the file, or fine-tune again"
        )


class JobModelProvider:
    """Backbones named job:ID."""

    scheme = SCHEME

    def list(self, pattern: str | None, env: Environment) -> list[dict[str, str]]:
        rows = []
        with env.db.read_session() as session:
            for job in queries.list_jobs(session, status="succeeded", limit=None):
                artifacts = {a.kind: a for a in queries.list_artifacts(session, job.id)}
                if "model_card" not in artifacts:
                    continue
                name = f"{SCHEME}:{job.id}"
                if pattern and not fnmatch.fnmatchcase(name, pattern):
                    continue
                try:
                    card = read_card(env.settings.artifacts_dir / artifacts["model_card"].path)
                except (OSError, ValueError):
                    continue
                acc = (card.get("metrics") or {}).get("val_acc")
                rows.append(
                    {
                        "name": name,
                        "source": "job",
                        "description": f"{card['arch']} fine-tuned on {len(card['classes'])} classes"
                        + (f", val_acc {acc:.3f}" if acc is not None else ""),
                    }
                )
        return rows

    def check(self, ref: BackboneRef, env: Environment) -> None:
        if ref.weights is not None:
            raise BadInput("--weights does not combine with --backbone job:ID; the job's own weights are used")
        card, _ = model_files(env, parse_job_ref(ref.name))
        try:
            read_card(card)
        except (OSError, ValueError) as exc:
            raise BadInput(f"the model card of {ref.name} is unreadable ({exc})") from exc

    def class_names(self, ref: BackboneRef, env: Environment) -> list[str] | None:
        card, _ = model_files(env, parse_job_ref(ref.name))
        return list(read_card(card)["classes"])

    def architecture(self, ref: BackboneRef, env: Environment) -> tuple[str, int | None, int | None] | None:
        card = read_card(model_files(env, parse_job_ref(ref.name), verify=False)[0])
        size = (card.get("data_config") or {}).get("input_size")
        return card["arch"], (size[-1] if size else None), card["num_classes"]

    def load(self, ref: BackboneRef, env: Environment, num_classes: int | None) -> LoadedBackbone:
        import timm
        from safetensors.torch import load_file

        job_id = parse_job_ref(ref.name)
        card_path, weights_path = model_files(env, job_id)
        card = read_card(card_path)
        model = timm.create_model(card["arch"], pretrained=False, num_classes=card["num_classes"])
        model.load_state_dict(load_file(str(weights_path)), strict=True)
        classes = list(card["classes"])
        if num_classes is not None and num_classes != card["num_classes"]:
            model.reset_classifier(num_classes)
            classes = None
        return LoadedBackbone(
            model=model,
            data_config=timm_data_config(card["data_config"]),
            arch=card["arch"],
            source=f"job {job_id} ({card['arch']} fine-tuned on {', '.join(card['classes'][:5])}"
            + ("..." if len(card["classes"]) > 5 else "")
            + ")",
            class_names=classes,
            extra={"card": card, "lineage": [*card.get("lineage", []), ref.name]},
            weights_file=weights_path,
        )


provider = JobModelProvider()
