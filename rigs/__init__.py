"""Shipped rig and board definitions (package data), found by name."""
