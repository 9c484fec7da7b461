"""Reading layouts: a child process per file (`inspect.py`), started and bounded by `reading.py`."""
