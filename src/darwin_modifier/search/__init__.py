"""Evolutionary search over per-module database levels (../shared/method.md §3)."""
