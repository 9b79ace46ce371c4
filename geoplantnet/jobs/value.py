def default_value_model(cfg):
    return "/nonexistent/value.pt"
