"""Argument checks shared by the model constructors."""


def check_sizes(name: str, sizes) -> list:
    """Return ``sizes`` as a list of positive ints, or raise a ValueError naming ``name``."""
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of positive ints, got {sizes!r}") from exc
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be positive, got {sizes}")
    return sizes
