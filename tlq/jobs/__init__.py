"""The submit side: a job's spec, its validation, its row, and sending its id to a queue (or running it here)."""
