"""Experiment configs: one file per experiment, `get_config(arg) -> ConfigDict`.

Config files import only ml_collections and `configs.common` (shared defaults).
"""
