"""scorecast: the commands (``scorecast ...``) and the pieces they share."""
