"""Universal adversarial perturbations for Caffe classifiers, and their file formats."""
from defense.core import ToolkitError  # noqa: F401
