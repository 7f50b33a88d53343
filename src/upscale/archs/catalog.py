"""Each architecture family's name and default hyperparameters, as data: what the registry checks
models.toml (and ``upscale models add``) against without importing torch, so that ``upscale models``
and the other commands that compute nothing answer at once. The family modules beside this file take
their ``DEFAULTS`` from here (one place for them); what a family computes stays in its own module."""

from __future__ import annotations

DEFAULTS: dict[str, dict] = {
    "rrdbnet": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4},
    "compact": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 32, "scale": 4, "act_type": "prelu"},
    "srresnet": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 16, "scale": 4, "bn": True},
    "msrresnet": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 16, "scale": 4},
    "span": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 48, "scale": 4, "norm": True, "deploy": False,
             "silu_first": True},
    "srcnn": {"num_in_ch": 3, "num_out_ch": 3, "n1": 64, "n2": 32, "f1": 9, "f2": 1, "f3": 5, "scale": 4},
    "tiny": {"num_in_ch": 3, "num_out_ch": 3, "scale": 2, "upsample": "nearest"},
}
