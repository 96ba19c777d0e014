"""Build a registry model's initial weights in a child process: keeps torch out of the server.

Importing torch and MONAI and building a network would cost the long-running
server ~250 MB of RSS it would never give back; a short-lived child pays it
instead. (Checking a model's name and parameters needs no child: see
`shared.models.resolve_params`.) Protocol: a JSON request on stdin (``model``,
``model_params``, ``seed``, ``out``); exit 0 once the safetensors bytes are
written to ``out``, exit 3 with the message on stderr when the model or its
parameters are invalid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from shared.errors import InvalidInput, Unavailable
from shared.schemas import RunConfig

INVALID_EXIT = 3
log = logging.getLogger(__name__)


async def build_in_worker(config: RunConfig, out: Path) -> None:
    """Write the run's initial weights to ``out`` from a child process.

    Raises `InvalidInput` for a bad model, `Unavailable` if the child crashes.
    """
    request = json.dumps(
        {
            "model": config.model,
            "model_params": config.model_params,
            "seed": config.seed,
            "out": str(out),
        }
    ).encode()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.services.model_worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate(request)
    if process.returncode == INVALID_EXIT:
        raise InvalidInput(stderr.decode().strip() or "invalid model")
    if process.returncode != 0:
        # the child's traceback names files: it goes to the log, never into a response
        log.error("model worker exited %s: %s", process.returncode, stderr.decode()[-2000:])
        raise Unavailable("building the initial model failed; see the server log")


def _main() -> int:
    import torch

    from shared import models
    from shared.tensors import state_tensors, to_safetensors

    torch.set_num_threads(1)
    request = json.loads(sys.stdin.read())
    try:
        network = models.build(request["model"], request["model_params"], request["seed"])
        Path(request["out"]).write_bytes(to_safetensors(state_tensors(network.state_dict())))
    except InvalidInput as exc:
        sys.stderr.write(exc.message)
        return INVALID_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(_main())
