"""opflow's op SDK for Python: an op is a decorated function with a typed config.

.. code-block:: python

    from dataclasses import dataclass, field
    import opflow

    @dataclass
    class Config:
        scenarios: int = field(default=1000, metadata={"description": "Scenarios simulated"})

    op = opflow.Op("my-op", "1.0.0", summary="What it computes, in one line")

    @op.step
    def run(ctx: opflow.StepContext, config: Config) -> dict[str, int]:
        ctx.progress(0.5, "halfway")
        return {"scenarios": config.scenarios}

    if __name__ == "__main__":
        op.main()

The worker gives the same guarantees as the Rust SDK (``docs/protocol.md``): prefetch 1,
ack only after the result is confirmed, heartbeats while a step runs, cancel and timeout,
recycling, the op's own broker identity, and trace context from the message headers.
"""

from .context import LogLevel, StepContext
from .op import Fatal, Op, Retryable, StepError
from .protocol import SCHEMA_VERSION, StepInput, StepMessage

__all__ = [
    "SCHEMA_VERSION",
    "Fatal",
    "LogLevel",
    "Op",
    "Retryable",
    "StepContext",
    "StepError",
    "StepInput",
    "StepMessage",
]
