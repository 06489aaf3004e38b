"""Family presets: plain data (name -> a kind's config), one module per family.

Each module exports ``PRESETS``; :mod:`llmzoo.presets` collects them. Family modules import their
kind's config class and nothing above it.
"""
