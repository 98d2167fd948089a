"""2D toy densities (being written)."""
__all__: list[str] = []
