"""Turn feature stores, explanations and graphs into a static site, and serve it with live views."""

from interp.site.build import build_dashboard

__all__ = ["build_dashboard"]
