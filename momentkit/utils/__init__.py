"""Small utilities shared by every sub-package."""
