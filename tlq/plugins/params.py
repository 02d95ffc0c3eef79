"""Parameter types shared by task models: data folders, precisions, compiling, fractions such as ``8/255``."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

Precision = Literal["auto", "fp32", "bf16"]
Compile = Literal["auto", "on", "off"]  # --compile: torch.compile the forward (tlq.ml.compiling)


def _existing_dir(value: Path) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"folder {path} does not exist; pass the path of a folder of images")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; pass the path of a folder of images")
    return path.resolve()


def _data_source(value: Path) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass a folder of images or a CSV manifest (path,label)")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise ValueError(f"{path} is a file but not a .csv manifest; pass a folder of images or a CSV (path,label)")
    return path.resolve()


def _existing_file(value: Path) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the path of one image file in it")
    if not path.is_file():
        raise ValueError(f"file {path} does not exist; pass the path of an image file")
    return path.resolve()


def parse_number(value):
    """Accepts numbers and fractions given as text (``8/255``); rejects NaN and infinities."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"'{text}' is not a number; write it as 0.03 or 8/255") from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


DataDir = Annotated[Path, AfterValidator(_existing_dir)]
DataSource = Annotated[Path, AfterValidator(_data_source)]
ImageFile = Annotated[Path, AfterValidator(_existing_file)]
Number = Annotated[float, BeforeValidator(parse_number)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad option as its flag (``--batch-size: ...``)."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
        flag = "--" + loc[0].replace("_", "-") if loc else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "is not an option of this task (see its --help)"
        elif error.get("type") == "missing":
            message = "is required"
        elif "input" in error and not isinstance(error["input"], dict | list):
            message = f"{message} (got {error['input']!r})"
        parts.append(f"{flag}: {message}" if loc else message)  # a check of the options together names none
    return "; ".join(parts)
