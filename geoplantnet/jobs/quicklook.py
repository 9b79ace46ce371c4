"""The quick-look figures moved to :mod:`geoplantnet.reports.quicklook`; this name stays until cli.py imports them
from there (issue 21)."""

from geoplantnet.reports.quicklook import composite_quicklook, species_quicklook

__all__ = ["composite_quicklook", "species_quicklook"]
