"""The applications behind `splatvlm COMMAND`: generate, fit, bench, train-reward, view."""
