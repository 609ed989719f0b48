"""Numba kernels: the fast twins of the NumPy spec (``pycohere.spec``) and of the block formats' dequantizers
(``pycohere.quant``). ``jit``: shared Numba set-up; ``dense``, ``attention``, ``quant``, ``kquant``, ``hf``,
``int8_dot``: the kernels; ``registry``: every (spec, kernel) pair, which the differential tests iterate over;
``dispatch``: the one place a backend, a CPU path and a weight's kernels are chosen.

May import: ``pycohere.spec``, ``pycohere.quant`` and below. Importing it compiles nothing.
"""
