"""Everything that runs inside a Ray Train worker: model, data, replay, schedules, loop, checkpoints."""
