"""Shipped YAML: engine presets, model cards, corpus sources and training configs
(installed as the package `vsr.configs`, so they travel with the wheel)."""
