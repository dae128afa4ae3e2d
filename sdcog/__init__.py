"""Stable Diffusion behind Cog's predictions API: the logic that predict.py hands requests to."""
