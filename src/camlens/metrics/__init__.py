"""Metrics for maps: weakly-supervised localisation (:mod:`camlens.metrics.localization`) and more.

Import the submodule you need, e.g. ``from camlens.metrics.localization import LocalizationMeter``; this
package imports nothing itself, so each metric family loads (and depends on) only what it uses.
"""
