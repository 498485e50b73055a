"""Experiments that do not ship: a cheaper canonicalizer by a linear probe on a frozen trunk (:mod:`.probe`),
distillation from a larger canonicalizer (:mod:`.distill`), and learning curves (``--train-fraction``).

They build on the library's public pieces (the serving network's trunk, the training loop's :class:`Objective`
hook, the data splits) and nothing in :mod:`canon`'s serving path knows of them. Their command line is
``python -m canon.research {probe,train} ...``; their results are in ``docs/experiments.md``.
"""
