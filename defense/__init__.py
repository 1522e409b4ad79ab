"""Selective Feature Regeneration (Borkar, Heide, Karam, CVPR 2020) on Caffe.

Pipeline: rank -> generate -> train -> attack -> evaluate. Importing the package keeps
Caffe's glog INFO lines quiet unless GLOG_minloglevel is already set.
"""
from .core import ToolkitError  # noqa: F401  (also sets GLOG_minloglevel before caffe loads)
