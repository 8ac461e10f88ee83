"""The training run: the loop, its state and checkpoints, loss-weight schedules, run folders, progress."""
