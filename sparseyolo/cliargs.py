"""Command-line argument parsing shared by the sub-commands of every layer (no dependencies)."""


def flag(overrides: dict, key: str, default: bool) -> bool:
    """The boolean CLI argument `key=` (True/False, 1/0, yes/no, any case); `ValueError` naming it otherwise."""
    v = str(overrides.get(key, default)).lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{key} must be True or False, got {overrides[key]!r}")
    return v in ("true", "1", "yes")
