"""Measured speed, side by side in one process: inference of every run's decoded model against its float
net (``speed``) and each method's training step against a float step (``step_speed``)."""
