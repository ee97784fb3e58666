"""The feedback loop: from users ' ratings to a better served model (export, train, gate, promote)."""
