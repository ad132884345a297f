"""The tracker: every conversation's token dictionary, attention scoring and pruning decisions (DESIGN.md 2 and 3)."""
