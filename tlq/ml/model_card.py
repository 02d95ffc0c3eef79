"""The model a finetune job leaves behind: weights as safetensors and a JSON model card that says what they
are (architecture, classes, preprocessing, how they were trained), so `--backbone job:ID` can rebuild it.

Beside them, timm's own ``config.json`` (as ``timm.models.save_for_hf`` writes it): the job's folder is then a
timm model folder too, and ``timm.create_model("local-dir:<artifacts>/<job>", pretrained=True)`` rebuilds the
model with its label names and preprocessing, with no tlq installed."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from tlq import __version__

MODEL_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_FORMAT = "tlq-model/1"
TIMM_CONFIG_FILE = "config.json"

log = logging.getLogger("tlq.model_card")


def jsonable_data_config(data_config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}


def timm_data_config(card_config: dict[str, Any]) -> dict[str, Any]:
    """A model card's data config in the form timm's create_transform takes."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in card_config.items()}


def save_model(artifacts, model, card: dict[str, Any]) -> None:
    """Writes ``model.safetensors`` and ``model_card.json`` as artifacts of the job."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with artifacts.target("model", MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": card["arch"]})
    full_card = {
        "format": CARD_FORMAT,
        "tlq_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        **card,
        "data_config": jsonable_data_config(card["data_config"]),
    }
    artifacts.write_text("model_card", CARD_FILE, json.dumps(full_card, indent=2, default=str))
    try:
        with artifacts.target("timm_config", TIMM_CONFIG_FILE) as tmp:
            write_timm_config(model, tmp, card["classes"], card["data_config"])
    except (TypeError, ValueError) as exc:  # an architecture argument timm cannot write: the model is still whole
        log.warning("no timm %s for this %s: %s", TIMM_CONFIG_FILE, card["arch"], exc)


def write_timm_config(model, path: Path, classes: list[str], data_config: dict[str, Any]) -> None:
    """Writes timm's ``config.json`` for ``model``: architecture, ``num_classes``, ``label_names`` and a
    ``pretrained_cfg`` with the preprocessing the model was trained with (input size, mean, std, interpolation,
    crop), by timm's own writer, the one behind ``save_for_hf`` and ``push_to_hf_hub``."""
    from timm.models._hub import save_config_for_hf

    save_config_for_hf(
        model,
        str(path),
        model_config={"label_names": [str(c) for c in classes]},
        data_config=timm_data_config(jsonable_data_config(data_config)),
    )


def read_card(path: Path) -> dict[str, Any]:
    card = json.loads(Path(path).read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} is not a tlq model card (format {card.get('format')!r})")
    return card
