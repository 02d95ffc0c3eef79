"""The model a finetune job leaves behind: weights as safetensors and a JSON model card that says what they
are (architecture, classes, preprocessing, how they were trained), so `--backbone job:ID` can rebuild it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tlq import __version__

MODEL_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_FORMAT = "tlq-model/1"


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


def read_card(path: Path) -> dict[str, Any]:
    card = json.loads(Path(path).read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} is not a tlq model card (format {card.get('format')!r})")
    return card
