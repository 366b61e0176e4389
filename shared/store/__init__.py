"""Where FIR keeps files: model artifacts, feature sets, routers, reports and images."""
