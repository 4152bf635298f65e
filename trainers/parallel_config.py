"""How a trial's workers hold and compute its model: the configuration of trainers/parallel.py.

Kept apart from the torch code it configures, so the sweep driver, which validates specs
and never builds a model, does not import torch (~1.3 s a command on 2 cores).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["ddp", "fsdp"]
Init = Literal["pretrained", "random"]
Precision = Literal["auto", "fp32", "bf16-mixed", "bf16-pure"]


class ParallelConfig(BaseModel):
    """How a trial's workers hold and compute its model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = Field("ddp", description="ddp: every worker holds the whole model; fsdp: weights, gradients and optimizer states sharded over the workers (FSDP2).")
    precision: Precision = Field("auto", description="auto: bf16-mixed on GPU, fp32 on CPU; fp32; bf16-mixed: bf16 compute, fp32 master weights and gradient reduction; bf16-pure: bf16 weights and optimizer states (drops small updates; only by name).")
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward (less memory, ~30% more compute).")
