"""biozoo.exporters (see ../shared/DESIGN.md)."""
