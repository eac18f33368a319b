"""PyTorch sequence encoders (LSTM, GRU, Transformer) and task heads; no I/O (ARCHITECTURE §4)."""
