"""Training: task samplers, loss weightings, optimizer and schedule, metrics, and the plain-torch loop."""
