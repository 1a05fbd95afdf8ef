"""Task-specific knowledge distillation from BERT into BiLSTMs, as a DVC pipeline."""
