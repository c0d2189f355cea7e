"""A deployment's environment switches (inf.yml `env`) applied over the setup request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inference import AppSetup

ENV_SETUP_SWITCHES = {"WAN_ANIMATE_FP8": "fp8", "WAN_ANIMATE_OFFLOAD_MODEL": "offload_model"}  # variable -> AppSetup field


def setup_from_env(setup: AppSetup, environ: Mapping[str, str]) -> AppSetup:
    """`setup` with the switches a deployment's environment turns on ("1"/"true"/"yes").

    They describe the deployment's hardware (inf.fp8-offload.yml sets both for 24 GB cards), so they win over the
    setup request; unset or "0" leaves the request's value.
    """
    on = {field: True for name, field in ENV_SETUP_SWITCHES.items()
          if environ.get(name, "").strip().lower() in ("1", "true", "yes")}  # fmt: skip
    return setup.model_copy(update=on) if on else setup
