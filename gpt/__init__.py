"""GPT training: model, config, training loop, checkpoints and sampling."""
