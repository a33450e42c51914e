"""Boolean config values as the command line gives them."""

from __future__ import annotations

__all__ = ["as_flag"]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def as_flag(value: bool | int | str, name: str) -> bool:
    """A boolean config value, also from the strings of ``--name true`` / ``--name false`` on the command line.

    MONAI's CLI passes ``true`` and ``false`` through as strings, and any non-empty string is truthy in
    Python, so ``--share_heads false`` would otherwise switch sharing on.

    Args:
        value: ``True``/``False``, ``1``/``0``, or one of ``true, false, yes, no, 1, 0`` in any case.
        name: the config id, for the error message.

    Raises:
        ValueError: any other value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")
