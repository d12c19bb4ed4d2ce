"""Training machinery that takes plain arguments (no config): the step, checkpoints, processes, reporting.

- `apprentice.train.step`: one optimizer step (`train_step`), evaluation, autocast modes.
- `apprentice.train.checkpoint`: the checkpoint file format, run-folder bookkeeping, RNG state.
- `apprentice.train.runtime`: device, torchrun process group, stopping on a signal.
- `apprentice.train.progress`: console progress, ``metrics.jsonl`` and TensorBoard.
- `apprentice.train.state`: `TrainState`, what a checkpoint holds (the counters and `Meter` sums too).
- `apprentice.train.optim`: optimizers, parameter groups, learning-rate schedules.
- `apprentice.train.batchnorm`: BatchNorm statistics re-estimated with the final weights.
- `apprentice.train.layout`: channels-last for a model, bar the convolutions a CPU kernel mishandles.
- `apprentice.train.allocator`: glibc malloc keeping what a step frees for the next one.

`apprentice.fit` composes them into a training run from a config.
"""

from apprentice.train.allocator import keep_freed_memory
from apprentice.train.batchnorm import reestimate_batchnorm
from apprentice.train.step import NonFiniteLossError, StepResult, evaluate, train_step

__all__ = ["NonFiniteLossError", "StepResult", "evaluate", "keep_freed_memory", "reestimate_batchnorm", "train_step"]
