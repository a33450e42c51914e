"""Evaluation reports that name what they measure: MONAI's metric files with class names instead of ``class0..N``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine
from monai.handlers import MetricsSaver
from monai.handlers.utils import write_metrics_reports
from monai.utils import string_list_all_gather

__all__ = ["NamedMetricsSaver"]


class NamedMetricsSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` whose per-case and summary files name each metric's classes.

    ``<metric>_raw.csv`` has one column per class and ``<metric>_summary.csv`` one row per class, headed by the
    class's name (``lv_myocardium``, ``WT``, ``anterior``) rather than MONAI's ``class0``, ``class1``, ...;
    ``metrics.csv`` and everything else is written as ``MetricsSaver`` writes it.

    Args:
        save_dir: the folder of the files.
        class_names: the names of the classes of every detailed metric, in channel order, or metric name ->
            its class names where metrics differ (BraTS scores regions and labels).
        kwargs: the other arguments of ``MetricsSaver``.

    Raises:
        KeyError: at the end of an evaluation, a detailed metric without class names.
        ValueError: at the end of an evaluation, a detailed metric with another number of classes than names.
    """

    def __init__(self, save_dir: str, class_names: Sequence[str] | Mapping[str, Sequence[str]], **kwargs: Any) -> None:
        super().__init__(save_dir, **kwargs)
        self.class_names = class_names

    def names_of(self, metric: str) -> list[str]:
        """The class names of one metric's columns."""
        if isinstance(self.class_names, Mapping):
            if metric not in self.class_names:
                raise KeyError(f"NamedMetricsSaver: no class names for the metric '{metric}' in class_names.")
            return [str(name) for name in self.class_names[metric]]
        return [str(name) for name in self.class_names]

    def __call__(self, engine: Engine) -> None:
        if self.save_rank >= idist.get_world_size():
            raise ValueError("target save rank is greater than the distributed group size.")
        filenames = string_list_all_gather(self._filenames) if idist.get_world_size() > 1 else self._filenames
        if idist.get_rank() != self.save_rank:
            return
        images = filenames or None
        wanted = self.metrics or ()
        metrics = {k: v for k, v in engine.state.metrics.items() if k in wanted or "*" in wanted}
        details = getattr(engine.state, "metric_details", {}) if self.metric_details is not None else {}
        details = {k: v for k, v in details.items() if k in self.metric_details or "*" in self.metric_details}
        common = {"save_dir": self.save_dir, "images": images, "summary_ops": self.summary_ops, "deli": self.deli}
        common["output_type"] = self.output_type
        write_metrics_reports(metrics=metrics, metric_details={}, **common)
        for name, values in details.items():
            names = self.names_of(name)
            if values.shape[-1] != len(names):
                raise ValueError(
                    f"NamedMetricsSaver: the metric '{name}' has {values.shape[-1]} classes, but class_names gives "
                    f"{len(names)}: {names}."
                )
            write_metrics_reports(metrics={}, metric_details={name: values}, class_labels=names, **common)
