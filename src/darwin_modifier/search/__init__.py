"""Evolutionary search over per-module database levels.

The method is DarwinLM's (Tang et al. 2025, arXiv 2502.07780, §3).
"""
