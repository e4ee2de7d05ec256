"""The shipped search spaces, installed as `hashtune.search_spaces` (YAML package data); see hashtune/paths.py."""
