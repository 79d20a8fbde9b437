"""Frozen pretrained vision backbones and their per-image feature cache (docs/cifar_pretrained.md)."""
