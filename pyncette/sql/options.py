"""Validation helpers for the SQL backends' keyword options."""

from __future__ import annotations

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def as_bool(option: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{option} must be a boolean, got {value!r}")


def as_int(option: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{option} must be {bound}, got {value}")
    return value


def as_str(option: str, value: object, *, optional: bool = False) -> str | None:
    """A string option; optional ones may be ``None`` or empty (an empty password)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not (value or optional):
        raise ValueError(f"{option} must be a non-empty string, got {type(value).__name__}")
    return value
