"""Applying a trained model to another cohort: ``cdsf-bench predict``, external validation, held-out sets.

``trained`` reads a finished run folder back (config, selected weights, threshold) and rebuilds
its model; ``apply`` predicts a cohort with it, the one path that ``predict``, a suite's
``test_data`` and a run's held-out phantom cohort share; ``output`` writes a prediction folder;
``command`` is the click command.
"""
