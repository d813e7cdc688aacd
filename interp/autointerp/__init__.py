"""Auto-interpretation: explain features in words and score the explanations."""

from interp.autointerp.explanations import load_explanations

__all__ = ["load_explanations"]
