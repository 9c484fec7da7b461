"""Precheck: an event-sourced service in front of the gf180mcu precheck image."""

__version__ = "0.1.0"
