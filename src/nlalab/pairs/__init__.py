"""Load an NLA pair exactly as released: registry, sidecars, markers, weights, validation."""
