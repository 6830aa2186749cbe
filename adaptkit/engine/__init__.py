"""The one training engine shared by every method (see adaptkit/engine/loop.py)."""
