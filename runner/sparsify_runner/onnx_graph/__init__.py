"""ONNX graph infrastructure the one-shot modifiers share: layer discovery with roles and
capture waves (``layers``), calibration feeds at the model's batch size (``feeds``),
activation capture by graph segments and initializer write-back (``capture``), and channel
surgery with its dependency groups (``channels``). No algorithm lives here."""
