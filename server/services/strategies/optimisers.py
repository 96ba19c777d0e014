"""Server optimisers on the mean delta: FedAvgM, FedAdam, FedYogi (Reddi et al. 2021).

The round's weighted mean delta ``d`` is the negative pseudo-gradient. With
``eta`` the server learning rate (Algorithm 2 of the paper, no bias correction):

- FedAvgM: ``m = momentum * m + d``; ``w += eta * m``
- FedAdam: ``m = b1 m + (1 - b1) d``; ``v = b2 v + (1 - b2) d^2``; ``w += eta m / (sqrt(v) + tau)``
- FedYogi: as FedAdam but ``v = v - (1 - b2) d^2 sign(v - d^2)``

``m`` starts at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``). Only
floating-point tensors have moments; integer tensors (counters) take the mean delta
as FedAvg does. The state is plain float32 arrays plus a step counter, serialised as
safetensors bytes (`ServerState.to_bytes`) so a round can persist it and a restarted
server continue with exactly the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shared.aggregation import AdaptiveConfig, FedAdam, FedAvgM, FedYogi
from shared.arrays import FLOATING, Array, Arrays, all_finite, from_safetensors, to_safetensors
from shared.errors import TensorError
from shared.schemas import TensorSpec

ServerOptimiserConfig = FedAvgM | AdaptiveConfig
_STEP = "step"


@dataclass(slots=True)
class ServerState:
    """A server optimiser's moments (``m/<tensor>``, ``v/<tensor>``) and its step count."""

    strategy: str
    step: int
    moments: Arrays

    def to_bytes(self) -> bytes:
        """Safetensors bytes: the moments, and the step as a 0-d int64 tensor."""
        arrays: Arrays = dict(self.moments)
        arrays[_STEP] = np.array(self.step, dtype=np.int64)
        return to_safetensors(arrays, metadata={"strategy": self.strategy})


def _kinds(config: ServerOptimiserConfig) -> tuple[str, ...]:
    return ("m",) if isinstance(config, FedAvgM) else ("m", "v")


def _floating(spec: list[TensorSpec]) -> list[TensorSpec]:
    return [item for item in spec if item.dtype in FLOATING]


def new_state(config: ServerOptimiserConfig, spec: list[TensorSpec]) -> ServerState:
    """The state before the first round: ``m = 0``, ``v = tau^2``."""
    moments: Arrays = {}
    for item in _floating(spec):
        moments[f"m/{item.name}"] = np.zeros(item.shape, dtype=np.float32)
        if not isinstance(config, FedAvgM):
            moments[f"v/{item.name}"] = np.full(item.shape, config.tau**2, dtype=np.float32)
    return ServerState(strategy=config.strategy, step=0, moments=moments)


def load_state(data: bytes, config: ServerOptimiserConfig, spec: list[TensorSpec]) -> ServerState:
    """Parse `ServerState.to_bytes` output; refuses state that does not fit the run's model."""
    arrays = from_safetensors(data)
    step = arrays.pop(_STEP, None)
    if step is None or step.shape != () or step.dtype != np.int64 or int(step) < 0:
        raise TensorError("server optimiser state has no valid step count")
    expected = {
        f"{kind}/{item.name}": item.shape for item in _floating(spec) for kind in _kinds(config)
    }
    if set(arrays) != set(expected):
        raise TensorError(f"server optimiser state does not match {config.strategy} on this model")
    moments: Arrays = {}
    for name, array in arrays.items():
        if list(array.shape) != expected[name] or array.dtype != np.float32:
            raise TensorError(f"server optimiser state {name!r} has the wrong shape or dtype")
        if not all_finite(array):
            raise TensorError(f"server optimiser state {name!r} is not finite", code="non_finite")
        moments[name] = array.copy()  # own the memory: the input buffer may go away
    return ServerState(strategy=config.strategy, step=int(step), moments=moments)


def server_step(
    config: ServerOptimiserConfig, state: ServerState, mean: Mapping[str, Array]
) -> Arrays:
    """Update ``state`` in place with the round's mean delta; return the server's delta.

    The result has a float32 array per floating tensor (the step to add to the
    weights) and passes integer tensors' mean delta through unchanged.
    """
    if state.strategy != config.strategy:
        raise TensorError(f"server state is for {state.strategy}, the run uses {config.strategy}")
    out: Arrays = {}
    for name, change in mean.items():
        m = state.moments.get(f"m/{name}")
        if m is None:  # an integer tensor: no moments, FedAvg's step
            out[name] = change
            continue
        d = np.asarray(change, dtype=np.float32)
        if isinstance(config, FedAvgM):
            np.multiply(m, config.momentum, out=m)
            np.add(m, d, out=m)
            out[name] = m * np.float32(config.server_learning_rate)
            continue
        v = state.moments[f"v/{name}"]
        np.multiply(m, config.beta1, out=m)
        m += np.float32(1 - config.beta1) * d
        square = d * d
        if isinstance(config, FedYogi):
            v -= np.float32(1 - config.beta2) * square * np.sign(v - square)
        else:
            np.multiply(v, config.beta2, out=v)
            v += np.float32(1 - config.beta2) * square
        assert isinstance(config, FedAdam | FedYogi)
        out[name] = (
            np.float32(config.server_learning_rate) * m / (np.sqrt(v) + np.float32(config.tau))
        )
    state.step += 1
    return out
