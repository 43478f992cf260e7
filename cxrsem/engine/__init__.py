"""The engine shared by training, dissection and attribution.

- :mod:`.device`: the compute device (resolved once) and mixed precision;
- :mod:`.data`: batched data access (``make_loader``, ``to_device``);
- :mod:`.preprocess`: :class:`~.preprocess.InputSpec`, the one place grey images become a
  checkpoint's model input (size, channels, normalisation, device, dtype);
- :mod:`.runner`: :func:`~.runner.run_model`, a model over a stream of batches with layer
  activations captured (training's evaluation, dissection's forward pass);
- :mod:`.layers`: layer lookup by name and hooks that always clean up;
- :mod:`.split`: the model split at a layer used by attribution.

What is accumulated over the runner's output (quantiles, IoU tallies, top images) follows the
streaming-statistic shape of :mod:`cxrsem.statistics`.
"""
