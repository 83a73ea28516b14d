"""Where a finished run's diagnoser looks: ``cdsf-bench interpret`` (docs/interpret.md).

``capture`` keeps what the coupling's diagnosers read while it predicts one subject;
``attribution`` turns one such input into maps (Captum: integrated gradients, Grad-CAM,
occlusion); ``scoring`` scores a map against the disease the phantom planted;
``interpretation`` interprets one run, ``suite`` every run of a suite (and the report's
table); ``output`` writes the maps and montages; ``command`` is the click command.
"""
