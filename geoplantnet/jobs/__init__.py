"""Jobs that follow the data flow end to end; the CLI calls these."""
