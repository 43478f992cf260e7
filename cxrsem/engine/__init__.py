"""The engine shared by training, dissection and attribution: device choice, batching, input
preprocessing, layer lookup and hooks, and the model split used by attribution."""
