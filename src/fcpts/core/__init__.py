"""Method-agnostic tensor code shared by FCPTS and the baselines; imports nothing above it.

Layers (:mod:`.layers`), exact-count masks (:mod:`.masks`), N:M patterns (:mod:`.patterns`), per-layer
allocations (:mod:`.allocation`), importance scores (:mod:`.importance`, :mod:`.scoring`), activation
statistics (:mod:`.activations`), the ridge refit (:mod:`.refit`), BatchNorm (:mod:`.batchnorm`),
calibration batches (:mod:`.calibration`), checks, evaluation, fidelity and the process group helpers.
"""
