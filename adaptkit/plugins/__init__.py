"""Built-in plugins, one module per component, registered through the `adaptkit` entry points.

Convention: plugin modules are light at import (pydantic and the standard library);
torch, transformers and optional extras are imported inside the functions that use
them, so `adaptkit --help` and `adaptkit plugins` stay fast.
"""
