"""Triton kernels of the indeed ops, registered as torch.ops.indeed_triton (see ops.py)."""
