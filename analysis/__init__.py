"""The experiments E1 to E5 (../shared/DESIGN.md), one script each, on the bundled checkpoints."""
