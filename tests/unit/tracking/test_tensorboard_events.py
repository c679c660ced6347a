"""The TensorBoard exporter builds what tensorboardX's summary.scalar builds, without
its conversions through NumPy (a third of the cost of a site's batch)."""

from __future__ import annotations

import pytest
from tensorboardX.summary import scalar

from gateway.tracking.exporters import tensorboard_tag


@pytest.mark.parametrize(
    "tag", ["loss", "site-1/train_loss", "/leading/slash", "with space", "x:y", "é", "a.b-c"]
)
def test_tags_are_cleaned_as_tensorboardx_cleans_them(tag: str) -> None:
    assert tensorboard_tag(tag) == scalar(tag, 1.0).value[0].tag


def test_the_exporter_writes_the_summary_tensorboardx_would_write() -> None:
    from tensorboardX.proto.summary_pb2 import Summary

    for tag, value in (("site-1/loss", 0.25), ("acc", 1e-30), ("big", 3.5e38)):
        ours = Summary(value=[Summary.Value(tag=tensorboard_tag(tag), simple_value=value)])
        assert ours.SerializeToString() == scalar(tag, value).SerializeToString()
