"""The run layer: the one place below the command line that sees the configuration tree.

- `loop`: `fit`, a run from a config to a run folder, as named steps.
- `build`: the config turned into plain objects (data, model, teacher, student, optimizer).
- `teacher`: a model built from its config, a teacher loaded from a run or file.
- `runs`: run folders, checkpoints and packed files read back (`load_run`, `load_model_file`).
- `file_checks`: what kind of file a path holds, and that a run never writes over what it reads.

Everything below (`apprentice.train`, `data`, `quant`, `export`, the top-level domain modules)
takes plain typed arguments and never imports this package or `apprentice.config`.
"""
