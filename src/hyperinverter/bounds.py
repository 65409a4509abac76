"""Bounds on numbers users give, shared by the library and the CLI (free of torch, so that ``--help`` stays fast)."""

from __future__ import annotations

MAX_SEED = 2**32 - 1  # as NVIDIA's gen_images.py takes them (numpy's RandomState seeds)
MAX_FPS = 240  # frames per second of an MP4
MAX_ALIGN_SCALE = 10  # a face crop's scale, FFHQ's framing being 1 (pipeline.json's align_scale)
MAX_IMAGES = 10_000_000  # images one command makes or reads (each held or scored: more is no run that ends)
