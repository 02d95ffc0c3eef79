"""Reading weight files safely: safetensors, or ``torch.load(weights_only=True)`` for .pth/.pt/.bin files.

A pickle that would run code is refused, never executed.
"""

from __future__ import annotations

from pathlib import Path

from tlq.errors import BadInput

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def check_weights_path(path: Path) -> Path:
    """Checks that ``path`` is an existing file of a known weights format; returns it resolved."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"weights file {path} does not exist; pass the path of a .safetensors or .pth file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise BadInput(f"weights file {path.name} is not a known format; use .safetensors (preferred) or .pth/.pt/.bin")
    return path.resolve()


def read_state_dict(path: Path) -> dict:
    """Loads a state dict without running any code from the file.

    Raises:
        BadInput: The file is corrupt, or it is a pickle holding more than tensors (which is refused).
    """
    import torch

    path = check_weights_path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise BadInput(f"weights file {path.name} is not valid safetensors ({_short(exc)}); re-export it") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadInput(
                f"weights file {path.name} was refused: it is not a plain tensor checkpoint ({_short(exc)}); "
                "tlq loads only weights (torch.load weights_only=True), so save a state_dict or use safetensors"
            ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"weights file {path.name} holds no state_dict of tensors; save model.state_dict() instead")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:200]
