"""The experiments E1 to E5 (README: "The study"; docs/e3-choice.md for E3), one script each, on the bundled
checkpoints."""
