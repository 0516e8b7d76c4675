"""biozoo.zoo (see ../shared/DESIGN.md)."""
