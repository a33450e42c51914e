"""The lab: studies, figures, benchmarks, data tools and the demo around the DSD bundles.

It imports the runtime (``custom``) and runs the bundles; the runtime never imports it, and a bundle package never
ships it. Each command has a console entry point (``dsd-cv``, ``dsd-figures``, ...; see ``pyproject.toml``) and
also runs as ``python -m dsd_lab.<subpackage>.<module>``.
"""
