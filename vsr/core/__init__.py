"""Pure torch maths of the engine: schedule, sampling, tiling, resampling, optical flow.

Nothing here prints, logs, or picks a device: tensors come in on a device and leave on it."""
