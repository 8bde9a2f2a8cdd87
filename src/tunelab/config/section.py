"""The base every config section shares, so all of them read YAML and refuse mistakes the same way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Numbers become strings where a string is expected, so YAML like `labels: [0, 1]` or `data.labels=[0,1]`
    # matches the integer labels in the data (labels are always compared as strings). Infinity and NaN are
    # never a sensible setting (`training.epochs=.inf`).
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )
