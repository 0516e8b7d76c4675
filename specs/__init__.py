"""biozoo.specs (see ../shared/DESIGN.md)."""
