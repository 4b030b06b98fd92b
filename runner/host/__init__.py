"""Runs ON the GPU host, inside the training venv: the session supervisor and its parts."""
