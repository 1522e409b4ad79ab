"""evaluate: baseline and defended nets side by side under universal perturbations.

- ``conditions``: one resumable pass over a data source under several perturbation conditions;
- ``compare``: ``Model``, ``evaluate()`` and the one per-model comparison (``metric_rows``);
- ``peers``: image-domain peer defences (median, JPEG, bit depth, pixel deflection), ``make_peer`` specs;
- ``deflection``: pixel deflection's steps (activation map, deflection, wavelet denoising);
- ``report``: markdown table, the one bar-chart helper, the report files;
- ``resources``: where a network's files and the published perturbations lie;
- ``demo``: the single-image demo behind ``defense_example.py``;
- ``__main__``: ``python -m defense.evaluate``.
"""
from .compare import Model, add_restoration, evaluate, metric_row, metric_rows  # noqa: F401
from .conditions import Condition, Predictions, draw_choices, predict_conditions  # noqa: F401
from .peers import PEERS, Preprocessor, make_peer  # noqa: F401
from .report import bar_chart, markdown_table, write_reports  # noqa: F401
