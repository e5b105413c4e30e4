"""Critic-free policy-gradient algorithms (GRPO family): pure tensor math and a registry."""
