"""Dev-only: the embedded stack, the traffic simulator, the demo and its report. Production never imports it."""
