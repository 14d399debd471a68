"""PyTorch twins of harmonax's models, for side-by-side speed (benchmarks/vs_pytorch.py).

Each twin mirrors a harmonax network with the official PyTorch parameter names,
so `torch_import.to_state_dict(net)` loads into it with strict=True, and
computes the same loss as the harmonax family's `compute_losses`.
`vs_pytorch.py` checks that both give the same outputs before timing them.
Written here from harmonax's own modules (no official code is copied).

Every model module exports:
  build(config) -> torch.nn.Module
  train_loss(model, batch, generator) -> scalar loss tensor (model in train mode)
  predict(model, composite, mask) -> [B, 3, H, W] in [0, 1] (model in eval mode)
with NCHW float tensors in [0, 1] (`composite`, `real`, `mask`).
"""
