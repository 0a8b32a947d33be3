"""The stages: plain functions `(row, options) -> row`, run by the fan-out (Ray or inline).

Each takes a manifest row, does its work for one object, and returns the updated row. Each is
safe to run twice: re-running overwrites the same staging keys, or finds the target object
created earlier instead of creating another.
"""
