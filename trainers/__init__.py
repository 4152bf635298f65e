"""The bottom layer: what runs inside a training process (model, data, replay, schedules, the
loop, checkpoints, the run dir) and the vocabulary every layer above shares (report points,
run statuses, user errors, Ray internals). Imports nothing from `search_spaces` or `sweeps`."""
