"""Observations from any file, extraction of inputs at points, training sets and their Dataset."""
