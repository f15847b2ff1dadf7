"""The one copy engine: image sources, destinations, the plan and its execution, for pull, mirror and install."""
